"""Fashion-MNIST with a Dropout MLP, EarlyStopping and ModelCheckpoint: a classic Keras program, ported to nnxp.

The Keras original is this file with the import block below replaced by:
    from tensorflow import keras
    from tensorflow.keras import layers
    from tensorflow.keras.datasets import fashion_mnist
"""

# --- imports (the only lines that differ from the Keras program) ---
import nnxp as keras
from nnxp import layers
from nnxp.datasets import fashion_mnist

# --- end of imports ---

num_classes = 10
batch_size = 128
epochs = 20

# the data, split between train and test sets
(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
x_train = x_train.astype("float32") / 255
x_test = x_test.astype("float32") / 255
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")

# convert class vectors to binary class matrices
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = keras.Sequential(
    [
        layers.Flatten(input_shape=(28, 28)),
        layers.Dense(256, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(num_classes, activation="softmax"),
    ]
)
model.summary()

model.compile(
    loss="categorical_crossentropy",
    optimizer=keras.optimizers.Adam(learning_rate=1e-3),
    metrics=["accuracy"],
)

callbacks = [
    keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
    keras.callbacks.ModelCheckpoint("fashion_mnist_best.keras", monitor="val_accuracy", save_best_only=True,
                                    verbose=1),
]
history = model.fit(
    x_train,
    y_train,
    batch_size=batch_size,
    epochs=epochs,
    verbose=2,
    validation_split=0.1,
    callbacks=callbacks,
)

score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])

best = keras.models.load_model("fashion_mnist_best.keras")
test_loss, test_acc = best.evaluate(x_test, y_test, verbose=0)
print(f"Best checkpoint test accuracy: {test_acc:.4f}")
