"""A regression MLP with mse loss and mae/mse metrics: a classic Keras program, ported to nnxp.

The Keras original is this file with the import block below replaced by:
    from tensorflow import keras
    from tensorflow.keras import layers
"""

import numpy as np

# --- imports (the only lines that differ from the Keras program) ---
import nnxp as keras
from nnxp import layers

# --- end of imports ---

# a smooth nonlinear target of 8 features, plus noise
rng = np.random.default_rng(42)
x = rng.uniform(-2.0, 2.0, size=(4000, 8)).astype("float32")
y = np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3] + 0.1 * rng.normal(size=4000)
y = y.astype("float32")
x_train, x_test = x[:3200], x[3200:]
y_train, y_test = y[:3200], y[3200:]

# standardize with the training statistics
mean = x_train.mean(axis=0)
std = x_train.std(axis=0)
x_train = (x_train - mean) / std
x_test = (x_test - mean) / std


def build_model():
    model = keras.Sequential(
        [
            keras.Input(shape=(8,)),
            layers.Dense(64, activation="relu"),
            layers.Dense(64, activation="relu"),
            layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse", metrics=["mae", "mse"])
    return model


model = build_model()
model.summary()
history = model.fit(x_train, y_train, epochs=60, batch_size=32, validation_split=0.2, verbose=0)
print("final val_mae:", history.history["val_mae"][-1])

test_loss, test_mae, test_mse = model.evaluate(x_test, y_test, verbose=0)
print(f"Test MSE: {test_mse:.4f}")
print(f"Test MAE: {test_mae:.4f}")

predictions = model.predict(x_test[:5], verbose=0).flatten()
for predicted, true in zip(predictions, y_test[:5]):
    print(f"predicted {predicted:.3f}, true {true:.3f}")
