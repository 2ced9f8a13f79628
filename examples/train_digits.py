"""The Python API behind `fasttrain train`: digits, a small CNN, Adam, a cosine schedule.

    python examples/train_digits.py [EPOCHS]      (default 15; the tests run 1)
"""
import math
import sys

import fasttrain as ft
from fasttrain.data import ChannelStandardizer, DataLoader, load_digits_dataset
from fasttrain.models import simple_cnn
from fasttrain.train import Trainer

data = load_digits_dataset(val_fraction=0.2, seed=0)
norm = ChannelStandardizer().fit(data.x_train)                       # training statistics only
train = DataLoader(norm(data.x_train), data.y_train, batch_size=32, shuffle=True, seed=0)
val = DataLoader(norm(data.x_val), data.y_val, batch_size=256, shuffle=False)

model = simple_cnn(in_ch=1, num_classes=10, image_size=8)
params = ft.ParamArena.for_model(model, seed=0)
opt = ft.optim.Adam(params, lr=3e-3, weight_decay=1e-4)
epochs, lr = int(sys.argv[1]) if len(sys.argv) > 1 else 15, 3e-3
total = epochs * len(train)
trainer = Trainer(model, params, opt, ft.losses.SoftmaxCrossEntropy(),
                  schedule=lambda step: 0.5 * lr * (1 + math.cos(math.pi * step / total)),
                  run_dir="runs/example_digits")
history = trainer.fit(train, val, epochs=epochs)
print(f"validation accuracy {history.epochs[-1]['val_acc']:.4f}")
