"""A binary classifier (sigmoid output, binary cross-entropy, float 0/1 labels, class weights for the rarer
class): a classic Keras program, ported to nnxp.

The Keras original is this file with the import block below replaced by:
    from tensorflow import keras
    from tensorflow.keras import layers
"""

import numpy as np

# --- imports (the only lines that differ from the Keras program) ---
import nnxp as keras
from nnxp import layers

# --- end of imports ---

# 10 features; the positive class (about a quarter of the rows) depends on them nonlinearly
rng = np.random.default_rng(7)
x = rng.normal(size=(5000, 10)).astype("float32")
score = x[:, 0] * x[:, 1] + np.sin(2.0 * x[:, 2]) + 0.5 * x[:, 3] - 0.8
y = (score > 0).astype("float32")
x_train, x_test = x[:4000], x[4000:]
y_train, y_test = y[:4000], y[4000:]

neg, pos = np.bincount(y_train.astype("int64"))
print(f"{pos} positive of {pos + neg} training samples")
# weight the classes so that both count as much in the loss
class_weight = {0: (pos + neg) / (2.0 * neg), 1: (pos + neg) / (2.0 * pos)}

model = keras.Sequential(
    [
        layers.Dense(32, activation="relu", input_shape=(10,)),
        layers.Dense(16, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ]
)
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
model.fit(
    x_train,
    y_train,
    epochs=40,
    batch_size=32,
    validation_split=0.2,
    class_weight=class_weight,
    verbose=0,
)

loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"Test loss: {loss:.4f}")
print(f"Test accuracy: {accuracy:.4f}")

probabilities = model.predict(x_test, verbose=0)
predicted = (probabilities > 0.5).astype("int32").ravel()
recall = float((predicted[y_test == 1] == 1).mean())
print(f"Recall of the positive class: {recall:.4f}")
