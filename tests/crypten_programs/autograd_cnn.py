"""CrypTen's examples/mpc_autograd_cnn as it is written, but for two things: the import,
and MNIST (a download) replaced by scikit-learn's digits upscaled to 28 x 28, with the
example's labels (0 against every other digit) and its split of the columns between
Alice (the first 20) and Bob (the last 8)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpc_ml.compat.crypten as crypten
import mpc_ml.compat.crypten.communicator as comm


def run_mpc_autograd_cnn(num_epochs=3, learning_rate=0.001, batch_size=5, print_freq=5,
                         num_samples=100):
    crypten.init()
    data_alice, data_bob, train_labels = preprocess_digits()
    rank = comm.get().get_rank()
    if rank == 0:
        x_alice = data_alice
    else:
        x_alice = torch.empty(data_alice.size())
    if rank == 1:
        x_bob = data_bob
    else:
        x_bob = torch.empty(data_bob.size())
    x_alice_enc = crypten.cryptensor(x_alice, src=0)
    x_bob_enc = crypten.cryptensor(x_bob, src=1)
    x_combined_enc = crypten.cat([x_alice_enc, x_bob_enc], dim=2)
    x_combined_enc = x_combined_enc.unsqueeze(1)
    x_reduced = x_combined_enc[:num_samples]
    y_reduced = train_labels[:num_samples]
    torch.manual_seed(0)
    model_plaintext = CNN()
    dummy_input = torch.empty((1, 1, 28, 28))
    model = crypten.nn.from_pytorch(model_plaintext, dummy_input)
    model.train()
    model.encrypt()
    return train_encrypted(x_reduced, y_reduced, model, num_epochs, learning_rate, batch_size,
                           print_freq)


def train_encrypted(x_encrypted, y_encrypted, encrypted_model, num_epochs, learning_rate,
                    batch_size, print_freq):
    rank = comm.get().get_rank()
    loss = crypten.nn.MSELoss()
    num_samples = x_encrypted.size(0)
    label_eye = torch.eye(2)
    losses = []
    for epoch in range(num_epochs):
        last_progress_logged = 0
        if rank == 0:
            print(f"Epoch {epoch} in progress:")
        for j in range(0, num_samples, batch_size):
            start, end = j, min(j + batch_size, num_samples)
            x_train = x_encrypted[start:end]
            x_train.requires_grad = True
            y_one_hot = label_eye[y_encrypted[start:end]]
            y_train = crypten.cryptensor(y_one_hot, requires_grad=True)
            output = encrypted_model(x_train)
            loss_value = loss(output, y_train)
            encrypted_model.zero_grad()
            loss_value.backward()
            encrypted_model.update_parameters(learning_rate)
            if j + batch_size - last_progress_logged >= print_freq:
                last_progress_logged += print_freq
                print(f"Loss {loss_value.get_plain_text().item():.4f}")
            losses.append(loss_value.get_plain_text().item())
        pred = output.get_plain_text().argmax(1)
        correct = pred.eq(y_encrypted[start:end])
        correct_count = correct.sum(0, keepdim=True).float()
        accuracy = correct_count.mul_(100.0 / output.size(0))
        loss_plaintext = loss_value.get_plain_text().item()
        print(f"Epoch {epoch} completed: Loss {loss_plaintext:.4f} Accuracy {accuracy.item():.2f}")
    return losses


def preprocess_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    targets = torch.tensor(digits.target)
    targets = (targets != 0).long()
    data_norm = (images - images.mean()) / images.std()
    return data_norm[:, :, :20], data_norm[:, :, 20:], targets


class CNN(nn.Module):
    def __init__(self):
        super(CNN, self).__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=0)
        self.fc1 = nn.Linear(16 * 12 * 12, 100)
        self.fc2 = nn.Linear(100, 2)

    def forward(self, x):
        out = self.conv1(x)
        out = F.relu(out)
        out = F.max_pool2d(out, 2)
        out = out.view(-1, 16 * 12 * 12)
        out = self.fc1(out)
        out = F.relu(out)
        out = self.fc2(out)
        return out


def train_plaintext(num_epochs=3, learning_rate=0.001, batch_size=5, num_samples=100):
    """The same training in torch: the losses the encrypted run should reproduce."""
    alice, bob, labels = preprocess_digits()
    x = torch.cat([alice, bob], dim=2).unsqueeze(1)[:num_samples]
    y = labels[:num_samples]
    torch.manual_seed(0)
    model = CNN()
    losses = []
    for _ in range(num_epochs):
        for j in range(0, num_samples, batch_size):
            out = model(x[j:j + batch_size])
            loss = F.mse_loss(out, torch.eye(2)[y[j:j + batch_size]])
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= learning_rate * p.grad
            losses.append(loss.item())
    return losses
