"""CrypTen's tutorial 4 (classification with an encrypted network): Alice trains her
network in the clear, then Alice's model (src=0) and Bob's test data (src=1) are
encrypted and the network runs on them; the output is decrypted. As the tutorial, but
for the import and the data: scikit-learn's digits (64 features) instead of MNIST."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import mpc_ml.compat.crypten as crypten
import mpc_ml.compat.crypten.communicator as comm
import mpc_ml.compat.crypten.mpc as mpc


class AliceNet(nn.Module):
    def __init__(self):
        super(AliceNet, self).__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        out = self.fc1(x)
        out = F.relu(out)
        out = self.fc2(out)
        out = F.relu(out)
        out = self.fc3(out)
        return out


def split_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train_alice(data_alice_flat, label_alice, num_epochs=8, batch_size=64):
    """Cell 3: Alice trains her network on her data, in plaintext."""
    torch.manual_seed(0)
    model = AliceNet()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-6)
    num_examples = len(label_alice)
    for i in range(num_epochs):
        for j in range(0, num_examples, batch_size):
            start, end = j, min(j + batch_size, num_examples)
            output = model(data_alice_flat[start:end, :])
            loss = criterion(output, label_alice[start:end])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def classify(folder):
    """Cells 4 to 8 on 2 parties: returns (decrypted outputs, accuracy) of every party."""
    x_train, y_train, x_test, y_test = split_digits()
    model = train_alice(x_train, y_train)
    torch.save(x_test, f"{folder}/bob_test.pth")

    @mpc.run_multiprocess(world_size=2)
    def encrypt_model_and_data():
        rank = comm.get().get_rank()
        if rank == 0:
            plaintext_model = model
        else:
            plaintext_model = AliceNet()
        dummy_input = torch.empty((1, 64))
        private_model = crypten.nn.from_pytorch(plaintext_model, dummy_input)
        private_model.encrypt(src=0)
        encrypted_flag = private_model.encrypted
        data_enc = crypten.load_from_party(f"{folder}/bob_test.pth", src=1)
        private_model.eval()
        with torch.no_grad():
            output_enc = private_model(data_enc)
        output = output_enc.get_plain_text()
        pred = output.argmax(1)
        correct = pred.eq(y_test)
        correct_count = correct.sum(0, keepdim=True).float()
        accuracy = correct_count.mul_(100.0 / output.size(0))
        return (encrypted_flag and crypten.is_encrypted_tensor(output_enc), output.tolist(),
                accuracy.item())

    with torch.no_grad():
        plain = model(x_test)
    return encrypt_model_and_data(), plain, (plain.argmax(1) == y_test).float().mean().item() * 100
