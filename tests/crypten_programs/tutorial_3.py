"""CrypTen's tutorial 3 (access control), its cells as a function: the data saved by
each owner, then four settings (data labeling, feature aggregation, dataset
augmentation, model hiding), each training or evaluating the linear SVM of
examples/mpc_linear_svm on 2 parties. As the tutorial but for the import, the files'
folder (a temporary one, not /tmp) and fewer epochs."""
import torch

import mpc_ml.compat.crypten as crypten
from mpc_ml.compat.crypten import mpc
from tests.crypten_programs.linear_svm import evaluate_linear_svm, train_linear_svm

ALICE = 0
BOB = 1


def run_tutorial(folder, epochs=10):
    num_features = 100
    num_train_examples = 1000
    num_test_examples = 100
    lr = 3.0
    torch.manual_seed(1)
    features = torch.randn(num_features, num_train_examples)
    w_true = torch.randn(1, num_features)
    b_true = torch.randn(1)
    labels = w_true.matmul(features).add(b_true).sign()
    test_features = torch.randn(num_features, num_test_examples)
    test_labels = w_true.matmul(test_features).add(b_true).sign()
    filenames = {name: f"{folder}/{name}.pth" for name in (
        "features", "labels", "features_alice", "features_bob", "samples_alice", "samples_bob",
        "w_true", "b_true", "test_features", "test_labels")}

    @mpc.run_multiprocess(world_size=2)
    def save_all_data():
        crypten.save(features, filenames["features"])
        crypten.save(labels, filenames["labels"])
        features_alice = features[:50]
        features_bob = features[50:]
        crypten.save(features_alice, filenames["features_alice"], src=ALICE)
        crypten.save(features_bob, filenames["features_bob"], src=BOB)
        samples_alice = features[:, :500]
        samples_bob = features[:, 500:]
        crypten.save(samples_alice, filenames["samples_alice"], src=ALICE)
        crypten.save(samples_bob, filenames["samples_bob"], src=BOB)
        crypten.save(w_true, filenames["w_true"], src=ALICE)
        crypten.save(b_true, filenames["b_true"], src=ALICE)
        crypten.save(test_features, filenames["test_features"], src=BOB)
        crypten.save(test_labels, filenames["test_labels"], src=BOB)

    save_all_data()

    @mpc.run_multiprocess(world_size=2)
    def data_labeling_example():
        features_enc = crypten.load(filenames["features"], src=ALICE)
        labels_enc = crypten.load(filenames["labels"], src=BOB)
        w, b = train_linear_svm(features_enc, labels_enc, epochs=epochs, lr=lr)
        return evaluate_linear_svm(test_features, test_labels, w, b)

    @mpc.run_multiprocess(world_size=2)
    def feature_aggregation_example():
        features_alice_enc = crypten.load(filenames["features_alice"], src=ALICE)
        features_bob_enc = crypten.load(filenames["features_bob"], src=BOB)
        features_enc = crypten.cat([features_alice_enc, features_bob_enc], dim=0)
        labels_enc = crypten.cryptensor(labels)
        w, b = train_linear_svm(features_enc, labels_enc, epochs=epochs, lr=lr)
        return evaluate_linear_svm(test_features, test_labels, w, b)

    @mpc.run_multiprocess(world_size=2)
    def dataset_augmentation_example():
        samples_alice_enc = crypten.load(filenames["samples_alice"], src=ALICE)
        samples_bob_enc = crypten.load(filenames["samples_bob"], src=BOB)
        samples_enc = crypten.cat([samples_alice_enc, samples_bob_enc], dim=1)
        labels_enc = crypten.cryptensor(labels)
        w, b = train_linear_svm(samples_enc, labels_enc, epochs=epochs, lr=lr)
        return evaluate_linear_svm(test_features, test_labels, w, b)

    @mpc.run_multiprocess(world_size=2)
    def model_hiding_example():
        w_true_enc = crypten.load(filenames["w_true"], src=ALICE)
        b_true_enc = crypten.load(filenames["b_true"], src=ALICE)
        test_features_enc = crypten.load(filenames["test_features"], src=BOB)
        return evaluate_linear_svm(test_features_enc, test_labels, w_true_enc, b_true_enc)

    return {"data_labeling": data_labeling_example(),
            "feature_aggregation": feature_aggregation_example(),
            "dataset_augmentation": dataset_augmentation_example(),
            "model_hiding": model_hiding_example()}


def plaintext(epochs=10):
    """The same training in torch: test accuracy of the three trained settings (they train
    on the same data from the same seed) and of the true model."""
    torch.manual_seed(1)
    features = torch.randn(100, 1000)
    w_true = torch.randn(1, 100)
    b_true = torch.randn(1)
    labels = w_true.matmul(features).add(b_true).sign()
    test_features = torch.randn(100, 100)
    test_labels = w_true.matmul(test_features).add(b_true).sign()
    w, b = torch.randn(1, 100), torch.randn(1)  # train_linear_svm's initial draws
    for _ in range(epochs):
        correct = w.matmul(features).add(b).sign().mul(labels)
        loss_grad = -labels * (1 - correct) * 0.5
        w = w - loss_grad.matmul(features.t()).div(loss_grad.size(1)) * 3.0
        b = b - loss_grad.mean() * 3.0

    def accuracy(w, b):
        return ((w.matmul(test_features).add(b).sign() * test_labels + 1) / 2).mean().item()
    return accuracy(w, b), accuracy(w_true, b_true)
