"""JAX with Flax (linen) and Optax, jitted train steps: the three tasks of TASKS.md.

Same sections as bench/frameworks/pytorch.py:
  1. framework and device  2. CNN  3. RNN  4. ResNet-50
Flax ships no model zoo, so ResNet-50 is written here (torchvision's layout, NHWC).
"""
from __future__ import annotations

from functools import partial

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.errors import DeviceUnavailable, UnsupportedPrecision
from bench.runner import batches_of

NAME = "jax"


class Model:
    """A Flax module with its variables, optimizer state and jitted functions."""

    def __init__(self, module, variables, dev, tx=None, seed: int = 0):
        self.module, self.dev, self.tx = module, dev, tx
        self.params = jax.device_put(variables["params"], dev)
        self.batch_stats = jax.device_put(variables.get("batch_stats"), dev)
        self.opt_state = jax.device_put(tx.init(self.params), dev) if tx else None
        self.key = jax.random.PRNGKey(seed)
        self.step = _make_train_step(module, tx, dev) if tx else None
        self.apply = jax.jit(partial(module.apply, train=False))


# ---------------------------------------------------------------- 1. framework and device

def init_device(device: str, precision: str):
    if precision != "fp32":
        raise UnsupportedPrecision(f"{NAME} runs fp32 only (asked for {precision})")
    if device == "gpu":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend at all
            gpus = []
        if not gpus:
            raise DeviceUnavailable(
                f"no GPU found: jax.devices('gpu') is empty (jax {jax.__version__}; GPU images "
                "install jax[cuda12]); check the driver and nvidia-smi, or run with --device cpu")
        return gpus[0]
    return jax.devices("cpu")[0]


def synchronize(dev) -> None:
    # Every timed function returns host values (a float loss, NumPy features), which waits
    # for the device; this also flushes pending effects.
    jax.effects_barrier()


def versions(dev) -> dict:
    cuda = cudnn = None
    if dev.platform == "gpu":
        try:
            from jax._src.lib import cuda_versions  # not a public API: best effort

            cuda = str(cuda_versions.cuda_runtime_get_version())
            cudnn = str(cuda_versions.cudnn_get_version())
        except (ImportError, AttributeError):
            pass
    return {
        "framework_version": f"{jax.__version__} (flax {flax.__version__})",
        "cuda": cuda,
        "cudnn": cudnn,
        "gpu": dev.device_kind if dev.platform == "gpu" else None,
    }


def data_format(dev) -> str:
    return "NHWC"  # Flax's native layout; XLA picks its own on the GPU


def count_params(model: Model) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(model.params))


def conventions(task: str, dev) -> dict:
    fast = ["jax.jit train step and prediction"]
    if task == "cnn":
        return {"layout": "NHWC", "init": "glorot_uniform kernels, zero biases", "fast_path": fast}
    if task == "rnn":
        return {"gru_bias": "two vectors per gate (input and hidden, cuDNN layout), GRU written "
                            "with lax.scan (Flax's GRUCell has a third layout)",
                "gru_biases": 600, "gru_kernel": "XLA (lax.scan)", "fast_path": fast}
    return {"resnet_conv_bias": False, "weights": "random", "layout": "NHWC",
            "source": "ResNet-50 written in Flax (torchvision layout, stride on the 3x3 conv)",
            "fast_path": fast}


def _make_train_step(module, tx, dev):
    donate = (0, 1) if dev.platform == "gpu" else ()  # the CPU backend cannot donate buffers

    @partial(jax.jit, donate_argnums=donate)
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = module.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


# ---------------------------------------------------------------- 2. CNN

class CNN(nn.Module):
    spec: object

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = self.spec
        c1, c2, c3, c4 = s.conv_channels
        kernel = (s.kernel_size, s.kernel_size)
        glorot = nn.initializers.glorot_uniform()

        def conv(channels):
            return nn.Conv(channels, kernel, padding="SAME", kernel_init=glorot)  # zero bias

        x = nn.relu(conv(c1)(x))
        x = nn.relu(nn.max_pool(conv(c2)(x), (2, 2), strides=(2, 2)))
        x = nn.Dropout(s.conv_dropout, deterministic=not train)(x)
        x = nn.relu(conv(c3)(x))
        x = nn.relu(nn.max_pool(conv(c4)(x), (2, 2), strides=(2, 2)))
        x = nn.Dropout(s.conv_dropout, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(s.dense_units, kernel_init=glorot)(x))
        x = nn.Dropout(s.dense_dropout, deterministic=not train)(x)
        return nn.Dense(s.classes, kernel_init=glorot)(x)


def build_cnn(spec, dev) -> Model:
    module = CNN(spec)
    channels, height, width = spec.image_shape
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, height, width, channels)))
    return Model(module, variables, dev, optax.sgd(spec.lr, momentum=spec.momentum))


def train_cnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_cnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


def _train_epoch(model: Model, batches) -> float:
    total = jnp.zeros(())
    for x, y in batches:
        model.key, dropout_key = jax.random.split(model.key)
        model.params, model.opt_state, loss = model.step(
            model.params, model.opt_state, jax.device_put(x, model.dev), jax.device_put(y, model.dev),
            dropout_key)
        total = total + loss  # stays on the device: no sync per step
    return float(total) / len(batches)


def _predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    variables = {"params": model.params}
    logits = [np.asarray(model.apply(variables, jax.device_put(xb, model.dev)))
              for xb in batches_of(x, batch_size)]
    return np.concatenate(logits)


# ---------------------------------------------------------------- 3. RNN

class GRU(nn.Module):
    """One GRU layer in the cuDNN/PyTorch formulation: input and hidden biases per gate."""

    units: int

    @nn.compact
    def __call__(self, x):
        h_units = self.units
        x_proj = nn.Dense(3 * h_units, name="input")(x)  # every step's input projection at once
        w_hidden = self.param("hidden_kernel", nn.initializers.orthogonal(), (h_units, 3 * h_units))
        b_hidden = self.param("hidden_bias", nn.initializers.zeros, (3 * h_units,))

        def step(h, x_t):
            xr, xz, xn = jnp.split(x_t, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ w_hidden + b_hidden, 3, axis=-1)
            r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return h, h

        h0 = jnp.zeros((x.shape[0], h_units), x.dtype)
        _, outputs = jax.lax.scan(step, h0, jnp.swapaxes(x_proj, 0, 1))
        return jnp.swapaxes(outputs, 0, 1)


class GRUClassifier(nn.Module):
    spec: object

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        s = self.spec
        outputs = GRU(s.gru_units)(nn.Embed(s.max_features, s.embedding_dim)(tokens))
        return nn.Dense(s.classes)(outputs[:, -1])  # the last time step


def build_rnn(spec, dev) -> Model:
    module = GRUClassifier(spec)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, spec.seq_len), jnp.int32))
    tx = optax.adam(spec.lr, b1=spec.beta1, b2=spec.beta2, eps=spec.epsilon)
    return Model(module, variables, dev, tx)


def train_rnn_epoch(model: Model, batches, spec) -> float:
    return _train_epoch(model, batches)


def predict_rnn(model: Model, x: np.ndarray, spec) -> np.ndarray:
    return _predict(model, x, spec.batch_size)


# ---------------------------------------------------------------- 4. ResNet-50

class Bottleneck(nn.Module):
    filters: int
    strides: int
    project: bool

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        conv = partial(nn.Conv, use_bias=False)
        stride = (self.strides, self.strides)
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.filters, (3, 3), strides=stride, padding=((1, 1), (1, 1)))(y)))
        y = norm()(conv(4 * self.filters, (1, 1))(y))
        shortcut = norm()(conv(4 * self.filters, (1, 1), strides=stride)(x)) if self.project else x
        return nn.relu(y + shortcut)


class ResNet50(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (blocks, filters) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(filters, strides, project=block == 0)(x, train)
        return jnp.mean(x, axis=(1, 2))  # global average pooling: 2,048 features


def build_resnet50(spec, dev) -> Model:
    module = ResNet50()
    channels, height, width = spec.image_shape
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, height, width, channels)))
    return Model(module, variables, dev)


def extract_features(model: Model, x: np.ndarray) -> np.ndarray:
    variables = {"params": model.params, "batch_stats": model.batch_stats}  # running statistics
    return np.asarray(model.apply(variables, jax.device_put(x, model.dev)))
