"""CrypTen's tutorial 1 (basics of CrypTen tensors), its cells in order in main(); the
printed values are also returned. crypten.init() without a launcher: a 1-party world."""
import torch

import mpc_ml.compat.crypten as crypten


def main():
    seen = {}
    crypten.init()
    x = torch.tensor([1.0, 2.0, 3.0])
    x_enc = crypten.cryptensor(x)
    x_dec = x_enc.get_plain_text()
    print(x_dec)
    seen["decrypted"] = x_dec
    x_enc = crypten.cryptensor([1.0, 2.0, 3.0])
    x_dec = x_enc.get_plain_text()
    print(x_dec)
    seen["from_list"] = x_dec

    y_enc = x_enc + 2
    print("addition:", y_enc.get_plain_text())
    seen["add_public"] = y_enc.get_plain_text()
    y_enc = x_enc - 2
    print("subtraction:", y_enc.get_plain_text())
    seen["sub_public"] = y_enc.get_plain_text()
    y_enc = x_enc * 2
    print("multiplication:", y_enc.get_plain_text())
    seen["mul_public"] = y_enc.get_plain_text()
    y_enc = x_enc / 2
    print("division:", y_enc.get_plain_text())
    seen["div_public"] = y_enc.get_plain_text()

    y_enc = crypten.cryptensor([2.0])
    z_enc = x_enc + y_enc
    print("addition:", z_enc.get_plain_text())
    seen["add"] = z_enc.get_plain_text()
    z_enc = x_enc - y_enc
    print("subtraction:", z_enc.get_plain_text())
    seen["sub"] = z_enc.get_plain_text()
    z_enc = x_enc * y_enc
    print("multiplication:", z_enc.get_plain_text())
    seen["mul"] = z_enc.get_plain_text()
    z_enc = x_enc / y_enc
    print("division:", z_enc.get_plain_text())
    seen["div"] = z_enc.get_plain_text()

    x = torch.tensor([2.0])
    x_enc = crypten.cryptensor(x)
    y = torch.tensor([4.0])
    y_enc = crypten.cryptensor(y)
    comp1 = x_enc < y
    print("comparison output encrypted check:", crypten.is_encrypted_tensor(comp1))
    print("comparison 2 < 4:", comp1.get_plain_text())
    comp2 = (x_enc < y_enc)
    print("comparison output encrypted check:", crypten.is_encrypted_tensor(comp2))
    print("comparison 2 < 4:", comp2.get_plain_text())
    comp3 = (x_enc > y_enc)
    print("comparison output encrypted check:", crypten.is_encrypted_tensor(comp3))
    print("comparison 2 > 4:", comp3.get_plain_text())
    seen["comparisons"] = [comp1.get_plain_text(), comp2.get_plain_text(), comp3.get_plain_text()]
    seen["encrypted"] = all(crypten.is_encrypted_tensor(c) for c in (comp1, comp2, comp3))

    a, b = 2, 3
    use_a = (x_enc < y_enc)
    z_enc = use_a * a + (1 - use_a) * b
    z = z_enc.get_plain_text()
    print("The plaintext value of z:", z)
    seen["select"] = z

    x_enc = crypten.cryptensor([1.0, 2.0, 3.0])
    y_enc = crypten.cryptensor([4.0, 5.0, 6.0])
    z_enc = crypten.stack([x_enc, y_enc])
    print('Result tensor plaintext:\n', z_enc.get_plain_text())
    seen["stack"] = z_enc.get_plain_text()
    w_enc = z_enc.reshape([-1, 6])
    print('Result tensor plaintext:\n', w_enc.get_plain_text())
    seen["reshape"] = w_enc.get_plain_text()
    print('z_enc', z_enc.size())
    print('w_enc', w_enc.size())
    seen["sizes"] = [list(z_enc.size()), list(w_enc.size())]
    crypten.uninit()
    return seen


# What the tutorial's stored outputs show.
EXPECTED = {
    "decrypted": [1.0, 2.0, 3.0], "from_list": [1.0, 2.0, 3.0], "add_public": [3.0, 4.0, 5.0],
    "sub_public": [-1.0, 0.0, 1.0], "mul_public": [2.0, 4.0, 6.0], "div_public": [0.5, 1.0, 1.5],
    "add": [3.0, 4.0, 5.0], "sub": [-1.0, 0.0, 1.0], "mul": [2.0, 4.0, 6.0],
    "div": [0.5, 1.0, 1.5], "comparisons": [[1.0], [1.0], [0.0]], "select": [2.0],
    "stack": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "reshape": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]],
    "sizes": [[2, 3], [1, 6]], "encrypted": True,
}
