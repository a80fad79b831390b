"""CrypTen's tutorial 7 (training an encrypted network), as the tutorial writes it: Alice
and Bob save their data with save_from_party, every party loads it with load_from_party,
a PyTorch model is converted with from_pytorch, encrypted and trained with
update_parameters. Data: scikit-learn's digits (no download), 64 features, 10 classes."""
import torch

import mpc_ml.compat.crypten as crypten
import mpc_ml.compat.crypten.mpc as mpc

ALICE, BOB = 0, 1


class ExampleNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.nn.functional.relu(self.fc1(x)))


def digits(n):
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.data[:n], dtype=torch.float32) / 16.0
    y = torch.nn.functional.one_hot(torch.tensor(data.target[:n]), 10).float()
    return x, y


def write_data(folder, n):
    """Alice's features and Bob's labels, each in its own file."""
    x, y = digits(n)
    torch.save(x, f"{folder}/alice_train.pth")
    torch.save(y, f"{folder}/bob_train.pth")


def train_encrypted(folder, epochs, learning_rate, world_size=2):
    @mpc.run_multiprocess(world_size=world_size)
    def run_encrypted_training():
        x_train = crypten.load_from_party(f"{folder}/alice_train.pth", src=ALICE)
        y_train = crypten.load_from_party(f"{folder}/bob_train.pth", src=BOB)
        torch.manual_seed(0)
        model_plaintext = ExampleNet()
        dummy_input = torch.empty(1, 64)
        model = crypten.nn.from_pytorch(model_plaintext, dummy_input)
        model.encrypt()
        model.train()
        loss = crypten.nn.MSELoss()
        losses = []
        for i in range(epochs):
            output = model(x_train)
            loss_value = loss(output, y_train)
            model.zero_grad()
            loss_value.backward()
            model.update_parameters(learning_rate)
            losses.append(loss_value.get_plain_text().item())
            crypten.print(f"Epoch {i} Loss: {losses[-1]:.4f}")
        return losses
    return run_encrypted_training()


def train_plaintext(n, epochs, learning_rate):
    x, y = digits(n)
    torch.manual_seed(0)
    model = ExampleNet()
    losses = []
    for _ in range(epochs):
        loss = torch.nn.functional.mse_loss(model(x), y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= learning_rate * p.grad
        losses.append(loss.item())
    return losses
