"""CrypTen's examples/mpc_linear_svm: a linear SVM trained on encrypted data (the
example's function, its logging and timing meters left out)."""
import torch

import mpc_ml.compat.crypten as crypten


def run_mpc_linear_svm(epochs=50, examples=50, features=100, lr=0.5):
    torch.manual_seed(1)
    x = torch.randn(features, examples)
    w_true = torch.randn(1, features)
    b_true = torch.randn(1)
    y = w_true.matmul(x) + b_true
    y = y.sign()
    w_init = torch.randn(1, features)
    b_init = torch.randn(1)

    x = crypten.cryptensor(x)
    y = crypten.cryptensor(y)
    w = crypten.cryptensor(w_init)
    b = crypten.cryptensor(b_init)
    accuracies = []
    for _ in range(epochs):
        yhat = w.matmul(x) + b
        yhat = yhat.sign()
        yy = yhat * y
        correct = (yy + 1).mul(0.5).sum()
        accuracies.append(correct.get_plain_text().float().div(examples).item())
        loss_grad = -y * (1 - yy) * 0.5
        b_grad = loss_grad.sum() * (1 / examples)
        w_grad = loss_grad.matmul(x.t()) * (1 / examples)
        w = w - w_grad * lr
        b = b - b_grad * lr
    return w.get_plain_text(), b.get_plain_text(), accuracies


def train_linear_svm(features, labels, epochs=50, lr=0.5, print_time=False):
    """The example's training function (its later version, which tutorial 3 imports)."""
    w = features.new(torch.randn(1, features.size(0)))
    b = features.new(torch.randn(1))
    for epoch in range(epochs):
        label_predictions = w.matmul(features).add(b).sign()
        correct = label_predictions.mul(labels)
        accuracy = correct.add(1).div(2).mean()
        if crypten.is_encrypted_tensor(accuracy):
            accuracy = accuracy.get_plain_text()
        if crypten.communicator.get().get_rank() == 0:
            print(f"Epoch {epoch} --- Training Accuracy %.2f%%" % (accuracy.item() * 100))
        loss_grad = -labels * (1 - correct) * 0.5
        b_grad = loss_grad.mean()
        w_grad = loss_grad.matmul(features.t()).div(loss_grad.size(1))
        w -= w_grad * lr
        b -= b_grad * lr
    return w, b


def evaluate_linear_svm(features, labels, w, b):
    """The example's test-set accuracy (returned here as well as printed)."""
    predictions = w.matmul(features).add(b).sign()
    correct = predictions.mul(labels)
    accuracy = correct.add(1).div(2).mean().get_plain_text()
    if crypten.communicator.get().get_rank() == 0:
        print("Test accuracy %.2f%%" % (accuracy.item() * 100))
    return accuracy.item()


def plaintext(epochs=50, examples=50, features=100, lr=0.5):
    """The example's PyTorch half: the same training in the clear."""
    torch.manual_seed(1)
    x = torch.randn(features, examples)
    w_true = torch.randn(1, features)
    b_true = torch.randn(1)
    y = (w_true.matmul(x) + b_true).sign()
    w, b = torch.randn(1, features), torch.randn(1)
    for _ in range(epochs):
        yy = (w.matmul(x) + b).sign() * y
        loss_grad = -y * (1 - yy) * 0.5
        b = b - loss_grad.sum() * (1 / examples) * lr
        w = w - loss_grad.matmul(x.t()) * (1 / examples) * lr
    return w, b
