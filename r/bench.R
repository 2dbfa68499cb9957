# R: the three tasks of TASKS.md with Keras, driven from R through reticulate (what the R
# keras package does underneath; that package comes from CRAN, which these machines cannot
# reach, so Keras is imported directly). Same model as bench/frameworks/tensorflow.py.
#
# Launched by the harness: `python -m bench run --framework r-keras ...` writes a request
# JSON (task, sized hyperparameters, .npy arrays, the harness's per-epoch orders) and runs
# `Rscript r/bench.R request.json`; this script writes the measurement JSON and the test
# logits the request names.
#
# Precision (bench/precisions.py), as in bench/frameworks/tensorflow.py: the request's
# "precision" sets Keras's global dtype policy before any model is built ("float32" for fp32 and
# tf32, "mixed_float16" for amp-fp16, "mixed_bfloat16" for amp-bf16: float32 variables, half
# compute), the output Dense float32 in every precision (float32 logits, softmax and loss),
# keras.mixed_precision.LossScaleOptimizer (dynamic) under amp-fp16, and TF32 through
# tf.config.experimental.enable_tensor_float_32_execution, on in tf32 only. What is set is read
# back from Keras and TensorFlow into the measurement's conventions$precision (the fields of
# bench.precisions.state). A precision this program cannot run on the device writes
# {"skipped": reason} (bench.precisions.skip_reason's words) and exits 0.
#
# Mode (bench/modes.py): the request's "mode", "reference" (absent: reference) or "tuned". Tuned
# sets what Keras's compile() documents beyond the reference's jit_compile = "auto", as
# bench/frameworks/keras_multi.py does for keras-tensorflow (the same Keras and TensorFlow): XLA
# (compile(jit_compile = TRUE); ResNet-50 through the model's jit_compile attribute) where "auto"
# leaves it off, on a CPU-only machine; with a GPU "auto" is XLA already. tuned_cpu_jit holds the
# choice per task; conventions$mode says what was switched on and what was left off, and why.
#
# Equivalence mode (issue 12, `python -m bench equivalence`): a request with "mode":
# "equivalence" names "tasks", a "folder" holding weights-TASK.npz (bench/canonical.py's layout)
# and inputs-TASK.npz, "specs" ({task: the check's hyperparameters}) and "epoch_orders" ({task:
# .npy path} for the trained tasks; drawn here with the harness's calls if absent). For each
# task this script does what bench/equivalence.py's work() does in a Python framework's
# environment: the model built as the benchmark builds it, the canonical weights loaded, the
# logits of x_eval, one fit() over x_train in the harness's order, the weights after it (or
# the ResNet-50 features), written to folder/r-keras-TASK.npz with work()'s keys; its last
# stdout line is {task: {"framework", "conventions", "roundtrip"}} as JSON. "device" (default
# "cpu"), "precision" ("fp32") and "seed" (0) are optional there.
suppressPackageStartupMessages({
  library(reticulate)
  library(jsonlite)
})

request <- fromJSON(commandArgs(trailingOnly = TRUE)[[1]], simplifyVector = TRUE)
spec <- request$spec
# "mode" is the run's mode (bench/modes.py: reference | tuned; absent: reference), except in the
# equivalence check's request, whose "mode" is "equivalence" (then "run_mode" is the run's mode),
# or which says "equivalence": true beside its mode.
equivalence <- identical(request$mode, "equivalence") || isTRUE(request$equivalence)
run_mode <- if (identical(request$mode, "equivalence")) request$run_mode else request$mode
if (equivalence) {  # the check runs on the CPU in fp32 unless the request says otherwise
  if (is.null(request$device)) request$device <- "cpu"
  if (is.null(request$precision)) request$precision <- "fp32"
  if (is.null(request$seed)) request$seed <- 0L
}

# An equivalence request has no measurement file: its errors go to stderr and the exit code.
fail <- function(message, status = 1L) {
  if (!is.null(request$measurement)) write_json(list(error = message), request$measurement, auto_unbox = TRUE)
  message("error: ", message)
  quit(save = "no", status = status)
}

skip <- function(reason) {
  if (!is.null(request$measurement)) write_json(list(skipped = reason), request$measurement, auto_unbox = TRUE)
  message("skipped: ", reason)
  quit(save = "no", status = if (equivalence) 4L else 0L)
}

# The harness's precision vocabulary, from this checkout (bench/precisions.py imports no framework).
script <- sub("^--file=", "", grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)[[1]])
repo <- normalizePath(file.path(dirname(script), ".."))
precisions <- import_from_path("bench.precisions", path = repo)
bench_modes <- import_from_path("bench.modes", path = repo)
builtins <- import_builtins()
if (is.null(run_mode)) run_mode <- bench_modes$DEFAULT
tryCatch(bench_modes$check_name(run_mode), error = function(e) fail(conditionMessage(e), 2L))

np <- import("numpy", convert = FALSE)
tf <- import("tensorflow")
keras <- import("keras")
layers <- keras$layers
policy_for <- c(fp32 = "float32", tf32 = "float32", "amp-fp16" = "mixed_float16",
                "amp-bf16" = "mixed_bfloat16")
OUTPUT <- "logits"  # the output Dense: float32 in every precision

# ---------------------------------------------------------------- mode (bench/modes.py)

# Tuned: compile(jit_compile = TRUE), XLA, where Keras's "auto" leaves it off (a CPU-only
# machine; with a GPU "auto" is XLA already), per task as measured for keras-tensorflow, the same
# Keras and TensorFlow (bench/frameworks/keras_multi.py's "Mode" paragraph).
tuned_cpu_jit <- c(cnn = FALSE, rnn = FALSE, resnet50 = FALSE)
# keras-tensorflow's figures (bench/frameworks/keras_multi.py, JIT_CPU_LEFT_OFF), 2026-12-01, this
# shared 2-core CPU; from R, the CNN's first 2-batch epoch took 132.9 s with XLA against 8.6 s.
jit_left_off <- c(
  cnn = paste("measured slower (keras-tensorflow, the same Keras and TensorFlow): steady epoch 4.2x the",
              "reference's (per round 4.2, 3.2, 2.6), first epoch 4.2x (compile); from R the first 2-batch epoch took",
              "132.9 s against 8.6 s (2026-12-01, this shared 2-core CPU)"),
  rnn = paste("no gain measured (keras-tensorflow, the same Keras and TensorFlow): steady epoch per round",
              "0.99, 1.2, 0.65 of the reference's, within this shared CPU's noise; first epoch 1.8x",
              "(2026-12-01, 2-core CPU)"),
  resnet50 = paste("measured slower (keras-tensorflow, the same Keras and TensorFlow): steady batch 1.6x",
                   "the reference's (per round 1.75, 1.51, 1.65), first batch 2.4x (2026-12-01, this shared 2-core CPU)"))

jit_for <- function(task, device) {
  cpu_only <- device == "cpu" && length(tf$config$list_physical_devices("GPU")) == 0
  if (run_mode == "tuned" && cpu_only && tuned_cpu_jit[[task]]) TRUE else "auto"
}

# bench.modes.state() as JSON wants it: switches an array, not_applied an object, even when empty.
as_state <- function(state) {
  state$switches <- I(as.character(unlist(state$switches)))
  if (length(state$not_applied) == 0) state$not_applied <- structure(list(), names = character(0))
  state
}

mode_state <- function(task, device) {
  if (run_mode == "reference") return(as_state(bench_modes$state(run_mode)))
  what <- if (task == "resnet50") "predict_on_batch" else "the fit() train step and predict()"
  jit <- sprintf("jit_compile=True (Model.compile, from R): XLA of %s", what)
  switches <- list()
  not_applied <- list()
  if (isTRUE(jit_for(task, device))) {
    switches <- list(jit)
  } else if (device == "gpu" || length(tf$config$list_physical_devices("GPU")) > 0) {  # --device cpu too
    not_applied[[jit]] <- "already on in the reference: jit_compile='auto' is XLA where TensorFlow lists a GPU"
  } else {
    not_applied[[jit]] <- jit_left_off[[task]]
  }
  if (task != "resnet50")
    not_applied[["steps_per_execution > 1 (Model.compile)"]] <- paste(
      "Keras reads steps_per_execution batches per execution whatever is left of the epoch",
      "(keras/src/trainers/epoch_iterator.py): unless it divides the epoch's batch count (CNN 781 = 11 x 71,",
      "GRU 390), an execution takes the next epoch's first batches, which breaks the per-epoch clock and",
      "the harness's batch order")
  as_state(bench_modes$state(run_mode, switches = switches, not_applied = not_applied))
}

# ---------------------------------------------------------------- framework and device

init_device <- function(device, precision) {
  gpus <- tf$config$list_physical_devices("GPU")
  capability <- NULL
  if (device == "gpu") {
    if (length(gpus) == 0) fail("no GPU found: TensorFlow lists no GPU (check the driver and nvidia-smi)", 3L)
    cc <- tf$config$experimental$get_device_details(gpus[[1]])$compute_capability
    if (!is.null(cc)) capability <- do.call(tuple, as.list(as.integer(unlist(cc))))
  }
  reason <- precisions$skip_reason(precision, device, capability, "r-keras")
  if (!is.null(reason)) skip(reason)
  if (device == "gpu") {
    keras$config$set_image_data_format("channels_first")  # NCHW on NVIDIA GPUs
  } else {
    if (length(gpus) > 0) tf$config$set_visible_devices(list(), "GPU")
    keras$config$set_image_data_format("channels_last")   # TF's CPU kernels want NHWC
  }
  # TF32 off explicitly but in tf32 (the amp modes too: they differ from fp32 by the half compute).
  tf$config$experimental$enable_tensor_float_32_execution(precision == "tf32")
  keras$mixed_precision$set_global_policy(policy_for[[precision]])  # before any model is built
  device
}

# The same seed gives the same float32 weights in every precision.
set_seed <- function(seed) {
  keras$utils$set_random_seed(as.integer(seed))
  tf$random$set_seed(as.integer(seed))
}

# amp-fp16: the optimizer wrapped in Keras's dynamic loss scaling (explicit; compile() would
# wrap it itself under mixed_float16).
loss_scaled <- function(optimizer) {
  if (request$precision == "amp-fp16") keras$mixed_precision$LossScaleOptimizer(optimizer) else optimizer
}

one_dtype <- function(dtypes) {
  names <- sort(unique(vapply(dtypes, function(d) keras$backend$standardize_dtype(d), character(1))))
  if (length(names) == 1) names else sprintf("mixed(%s)", paste(names, collapse = ", "))
}

# What is set for this model, read back from Keras and TensorFlow (bench.precisions.state):
# the layers' compute dtype (all but the float32 output Dense), the trainable variables' dtype
# (the master weights), the optimizer's class (Keras 3's LossScaleOptimizer is dynamic only)
# and the TF32 switch. A CPU has no TF32 whatever the switch says.
numerics <- function(model, device, precision) {
  tf32_switch <- isTRUE(tf$config$experimental$tensor_float_32_execution_enabled())
  all_layers <- Filter(function(l) !builtins$isinstance(l, keras$layers$InputLayer), model$layers)
  body <- Filter(function(l) l$name != OUTPUT, all_layers)
  head <- Filter(function(l) l$name == OUTPUT, all_layers)
  optimizer <- if (py_has_attr(model, "optimizer")) model$optimizer else NULL  # none uncompiled
  override <- Sys.getenv(precisions$TF32_OVERRIDE_VARIABLE, unset = NA)
  switches <- list(
    "tf.config.experimental.tensor_float_32_execution_enabled()" = tf32_switch,
    "keras.mixed_precision.global_policy()" = keras$mixed_precision$global_policy()$name,
    "model.dtype_policy" = model$dtype_policy$name,
    "model.weights dtype" = one_dtype(lapply(model$weights, function(v) v$dtype)))
  switches[precisions$TF32_OVERRIDE_VARIABLE] <- list(if (is.na(override)) NULL else override)  # unset: null
  mechanism <- sprintf("keras.mixed_precision.set_global_policy('%s') from R", policy_for[[precision]])
  read_back <- list("tf32", "compute_dtype", "param_dtype")
  loss_scaler <- NULL
  if (length(head) > 0) {
    switches[[paste(OUTPUT, "(output Dense) dtype_policy")]] <- head[[1]]$dtype_policy$name
    mechanism <- c(mechanism, "output Dense dtype='float32'")
  }
  if (!is.null(optimizer)) {
    scaled <- builtins$isinstance(optimizer, keras$mixed_precision$LossScaleOptimizer)
    loss_scaling <- if (scaled) "dynamic" else "none"
    read_back <- c(read_back, list("loss_scaling"))
    switches[["model.optimizer"]] <- builtins$type(optimizer)$`__name__`
    switches[["model.loss dtype"]] <- model$loss$dtype
    if (scaled) {
      loss_scaler <- sprintf("keras.mixed_precision.LossScaleOptimizer(%s)",
                             builtins$type(optimizer$inner_optimizer)$`__name__`)
      switches[["LossScaleOptimizer.initial_scale"]] <- as.numeric(optimizer$initial_scale)
      switches[["LossScaleOptimizer.dynamic_growth_steps"]] <- as.integer(optimizer$dynamic_growth_steps)
      mechanism <- c(mechanism, "keras.mixed_precision.LossScaleOptimizer (dynamic)")
    }
  } else {  # ResNet-50 features: inference, no loss and no optimizer; the precision's rule stated
    loss_scaling <- precisions$LOSS_SCALING[[precision]]
    mechanism <- c(mechanism, "inference only: no loss to scale")
  }
  mechanism <- c(mechanism, sprintf("tf.config.experimental.enable_tensor_float_32_execution(%s)",
                                    if (precision == "tf32") "True" else "False"))
  precisions$state(
    precision, tf32 = tf32_switch && device == "gpu",
    compute_dtype = one_dtype(lapply(body, function(l) l$compute_dtype)),
    param_dtype = one_dtype(lapply(model$trainable_weights, function(v) v$dtype)),
    loss_scaling = loss_scaling, loss_scaler = loss_scaler,
    mechanism = paste(mechanism, collapse = "; "), read_back = read_back, switches = switches)
}

synchronize <- function(device) {
  if (device == "gpu") tf$test$experimental$sync_devices()
}

# Peak device memory (a framework file's peak_device_memory): the peak of TensorFlow's GPU
# allocator since the last call (reset on each call); NULL on the CPU.
peak_device_memory <- function(device) {
  if (device != "gpu") return(NULL)
  peak <- tf$config$experimental$get_memory_info("GPU:0")$peak
  tf$config$experimental$reset_memory_stats("GPU:0")
  list(peak_bytes = as.numeric(peak), counter = "tf.config.experimental.get_memory_info('GPU:0')['peak']",
       scope = "since the last call")
}

elapsed <- function() proc.time()[["elapsed"]]
# Unix seconds: the harness cuts the telemetry it samples from outside to these timed sections.
unix_time <- function() as.numeric(Sys.time())

count_params <- function(model) {
  sum(vapply(model$trainable_weights, function(w) as.numeric(py_to_r(np$size(w$numpy()))), numeric(1)))
}

# Images arrive NCHW from the harness; on the CPU Keras wants NHWC.
images_for <- function(x, device) {
  if (device == "gpu") x else np$ascontiguousarray(np$transpose(x, c(0L, 2L, 3L, 1L)))
}

image_shape <- function(shape, device) {
  shape <- as.integer(shape)
  if (device == "gpu") tuple(shape[1], shape[2], shape[3]) else tuple(shape[2], shape[3], shape[1])
}

# ---------------------------------------------------------------- CNN

build_cnn <- function(spec, device) {
  ch <- as.integer(spec$conv_channels)
  k <- as.integer(spec$kernel_size)
  model <- keras$Sequential(list(
    keras$Input(shape = image_shape(spec$image_shape, device)),
    layers$Conv2D(ch[1], k, padding = "same"), layers$Activation("relu"),
    layers$Conv2D(ch[2], k, padding = "same"), layers$MaxPooling2D(2L, 2L), layers$Activation("relu"),
    layers$Dropout(spec$conv_dropout),
    layers$Conv2D(ch[3], k, padding = "same"), layers$Activation("relu"),
    layers$Conv2D(ch[4], k, padding = "same"), layers$MaxPooling2D(2L, 2L), layers$Activation("relu"),
    layers$Dropout(spec$conv_dropout),
    layers$Flatten(),
    layers$Dense(as.integer(spec$dense_units)), layers$Activation("relu"),
    layers$Dropout(spec$dense_dropout),
    layers$Dense(as.integer(spec$classes), dtype = "float32", name = OUTPUT)  # float32 logits
  ))
  model$compile(
    optimizer = loss_scaled(keras$optimizers$SGD(learning_rate = spec$lr, momentum = spec$momentum)),
    loss = keras$losses$SparseCategoricalCrossentropy(from_logits = TRUE),
    jit_compile = jit_for("cnn", device)
  )
  model
}

# ---------------------------------------------------------------- RNN

build_rnn <- function(spec, device) {
  model <- keras$Sequential(list(
    keras$Input(shape = tuple(as.integer(spec$seq_len)), dtype = "int32"),
    layers$Embedding(as.integer(spec$max_features), as.integer(spec$embedding_dim)),
    layers$GRU(as.integer(spec$gru_units)),  # cuDNN kernel on GPU; the last time step
    layers$Dense(as.integer(spec$classes), dtype = "float32", name = OUTPUT)  # float32 logits
  ))
  model$compile(
    optimizer = loss_scaled(keras$optimizers$Adam(learning_rate = spec$lr, beta_1 = spec$beta1,
                                                  beta_2 = spec$beta2, epsilon = spec$epsilon)),
    loss = keras$losses$SparseCategoricalCrossentropy(from_logits = TRUE),
    jit_compile = jit_for("rnn", device)
  )
  model
}

# ---------------------------------------------------------------- training, shared

# How epochs are timed, as in bench/frameworks/tensorflow.py: one fit() over all epochs, each
# epoch timed in R from on_epoch_begin to on_epoch_end (device synchronised), so that fit()'s
# per-call setup and its end after the last epoch stay outside the epochs' clocks, and one input
# iterator serves every epoch (a new one per epoch made TensorFlow pause at some epochs' start).
# The harness owns the shuffle: the request's epoch_orders (epochs x samples) are its per-epoch
# orders, the ones a Python framework trains on with this seed. Each epoch's shuffled copy is
# made between epochs, outside the clock.
epoch_timing <- paste("one fit() over all epochs (one input iterator, steps_per_epoch); per-epoch",
                      "times taken in R at epoch boundaries (on_epoch_begin to on_epoch_end), device",
                      "synchronised; the harness's per-epoch orders (epoch_orders), batches through",
                      "a PyDataset, in order")

# The data source is Python: TensorFlow's input pipeline calls it from its own threads, where R
# cannot run.
py_run_string("
import keras

class EpochBatches(keras.utils.PyDataset):
    '''Item k: batch k % n of epoch k // n in the harness's orders (epochs x samples). Endless,
    so that fit() keeps one input iterator for every epoch (steps_per_epoch cuts the stream into
    epochs). An epoch's batches are views into its shuffled copy, made by stage() between epochs;
    a batch that TensorFlow reads ahead into the next epoch before that copy exists is gathered
    on its own from the epoch's order.'''

    def __init__(self, x, y, orders, batch_size):
        super().__init__(workers=1, use_multiprocessing=False)  # in order, in this process
        self.x, self.y, self.orders, self.batch_size = x, y, orders, batch_size
        self.n = len(x) // batch_size
        self.served_to = 0  # one past the last item asked for
        self.stage(0)

    @property
    def num_batches(self):
        return None  # endless

    def stage(self, epoch):
        order = self.orders[epoch]
        self.staged = (epoch, self.x[order], self.y[order])  # one assignment: old or new, never half

    def __getitem__(self, k):
        self.served_to = max(self.served_to, k + 1)
        epoch, i = divmod(k, self.n)
        epoch = min(epoch, len(self.orders) - 1)  # read ahead past the last epoch: never trained
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        staged, xs, ys = self.staged
        if epoch == staged:
            return xs[s], ys[s]
        rows = self.orders[epoch][s]
        return self.x[rows], self.y[rows]
")

train <- function(model, x, y, spec, device, orders) {
  epochs <- as.integer(spec$epochs)
  bs <- as.integer(spec$batch_size)
  batches <- as.integer(py_to_r(x$shape[0])) %/% bs
  source <- py$EpochBatches(x, y, orders, bs)  # makes epoch 1's copy, before any clock
  clock <- new.env()
  clock$times <- numeric(0)
  clock$losses <- numeric(0)
  clock$windows <- list()  # each epoch's [start, end] in Unix seconds
  EpochClock <- PyClass("EpochClock", inherit = keras$callbacks$Callback, defs = list(
    `__module__` = "bench_r",
    on_epoch_begin = function(self, epoch, logs = NULL) {
      synchronize(device)
      if (epoch == 0L) peak_device_memory(device)  # resets the counter: the epochs' peak alone
      clock$opened <- unix_time()
      clock$start <- elapsed()
      NULL
    },
    on_epoch_end = function(self, epoch, logs = NULL) {
      synchronize(device)
      clock$times <- c(clock$times, elapsed() - clock$start)
      clock$windows[[length(clock$windows) + 1L]] <- c(clock$opened, unix_time())
      if (source$served_to < (epoch + 1L) * batches)
        stop(sprintf("epoch %d ended before its %d batches were read", epoch + 1L, batches))
      clock$losses <- c(clock$losses, logs$loss)
      message(sprintf("[r-keras %s] epoch %d/%d: %.2f s, mean loss %.4f", spec$name, epoch + 1L,
                      epochs, tail(clock$times, 1), logs$loss))
      if (epoch + 1L < epochs) source$stage(epoch + 1L)  # the next epoch's copy, outside the clock
      NULL
    }
  ))
  model$fit(source, epochs = epochs, steps_per_epoch = batches, shuffle = FALSE, verbose = 0L,
            callbacks = list(EpochClock()))
  list(epoch_times_s = I(clock$times), losses = I(clock$losses),  # I(): JSON arrays even for one epoch
       timed_windows = clock$windows, device_memory = peak_device_memory(device))
}

# ---------------------------------------------------------------- ResNet-50

build_resnet50 <- function(spec, device) {
  model <- keras$applications$ResNet50(include_top = FALSE, weights = NULL, pooling = "avg",
                                       input_shape = image_shape(spec$image_shape, device))
  # the attribute compile(jit_compile = ...) sets; compile() itself would add an optimizer
  if (isTRUE(jit_for("resnet50", device))) model$jit_compile <- TRUE
  model
}

extract <- function(model, x, spec, device) {
  bs <- as.integer(spec$batch_size)
  batch <- function(i) images_for(np$take(x, np$arange(i * bs, (i + 1L) * bs), axis = 0L), device)
  warmup <- as.integer(spec$warmup_batches)
  for (i in seq_len(warmup) - 1L) model$predict_on_batch(batch(i))  # cold start, untimed
  synchronize(device)
  peak_device_memory(device)  # resets the counter: the timed batches' peak alone
  opened <- unix_time()
  start <- elapsed()
  features <- NULL
  for (i in seq_len(spec$batches) + warmup - 1L) features <- model$predict_on_batch(batch(i))
  synchronize(device)
  elapsed_s <- elapsed() - start
  window <- c(opened, unix_time())
  features <- np$asarray(features, dtype = "float32")  # float32 whatever the compute dtype
  list(time_total_s = elapsed_s, images = spec$batches * bs,
       features_shape = as.integer(py_to_r(np$shape(features))),
       features_dtype = builtins$str(features$dtype),
       timed_windows = list(window), device_memory = peak_device_memory(device))
}

# What each task's model does by convention (the measurement's and the equivalence check's).
# ResNet-50, keras/src/applications/resnet.py (residual_block_v1): the stage's stride on the
# block's first 1x1 conv, every BatchNormalization with epsilon=1.001e-5, pool1 ZeroPadding2D(1)
# then a 3x3/2 max pool after a ReLU (zeros pad values >= 0: torchvision's padding 1). Adam,
# keras/src/optimizers/adam.py: epsilon on the uncorrected sqrt(v), the bias correction in the
# step size; on TensorFlow the Embedding's gradient is a tf.IndexedSlices whose occurrences
# Adam squares one by one before v sums them per row (as in bench/frameworks/keras_multi.py).
conventions_for <- function(task, device, state) {
  if (task == "resnet50")
    return(list(resnet_conv_bias = TRUE, weights = "random", timing = "timed in R",
                source = "keras.applications.ResNet50(include_top=False, pooling='avg') from R",
                resnet_stride = "1x1 (original paper, v1)", bn_epsilon = 1.001e-5,
                pool1 = "max 3x3, stride 2, padding 1", precision = state,
                mode = mode_state(task, device)))
  if (task == "cnn")
    return(list(layout = if (device == "gpu") "NCHW" else "NHWC",
                init = "glorot_uniform (Keras defaults)", timing = "timed in R",
                epoch_timing = epoch_timing, precision = state, mode = mode_state(task, device)))
  list(gru_bias = "two vectors per gate (reset_after=True)", gru_biases = 600L,
       adam_epsilon = "sqrt(v) + eps, bias correction in the step size (Kingma & Ba epsilon hat)",
       adam_embedding_v = "sum of each occurrence's squared gradient (tf.IndexedSlices)",
       timing = "timed in R", epoch_timing = epoch_timing, precision = state,
       mode = mode_state(task, device))
}

# ---------------------------------------------------------------- equivalence (issue 12)

# The canonical weight exchange through bench/frameworks/keras_multi.py's conversions (that file
# runs in the Keras environments; this script in TensorFlow's, whose keras is Keras 3 as well,
# so it imports them): Conv2D kernels HWIO, Dense kernels (in, out), Embedding (vocab, E), GRU(reset_after=True)
# kernel (E, 3H), recurrent_kernel (H, 3H), bias (2, 3H) with the gates (z, r, h)
# (keras/src/layers/rnn/gru.py), fc1's rows in the order Keras's Flatten makes (read from the
# layer itself: (h, w, c) in Keras 3 whatever the data format), the Keras applications'
# ResNet50 layer names mapped to torchvision's, its conv biases zero.
py_run_string(sub("@REPO@", deparse(repo), fixed = TRUE, x = "
import sys
sys.path.insert(0, @REPO@)
import dataclasses
import numpy as np
import keras
from bench import canonical, tasks as bench_tasks


def eq_spec(task, hp):
    '''The check's spec (a dataclass) from the request's hyperparameters.'''
    base = bench_tasks.SPECS[task]
    fields = {}
    for f in dataclasses.fields(base):
        if f.name in hp:
            value, default = hp[f.name], getattr(base, f.name)
            if isinstance(default, tuple):
                value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            fields[f.name] = value
    return dataclasses.replace(base, **fields)


def eq_load(folder, task, spec):
    weights = canonical.load(f'{folder}/weights-{task}.npz', task, spec)
    with np.load(f'{folder}/inputs-{task}.npz', allow_pickle=False) as data:
        inputs = {name: data[name] for name in data.files}
    return weights, inputs


# Keras's own layout conversions, from the Keras framework file: R builds the same Keras 3
# models (this environment's keras), so the canonical weights cross the reticulate boundary
# through the same code.
from bench.frameworks import keras_multi
eq_get_weights, eq_set_weights = keras_multi.get_weights, keras_multi.set_weights


def eq_checked(model, task, spec):
    return canonical.check(task, eq_get_weights(model, task), spec, who='r-keras get_weights')


def eq_roundtrip(model, task, weights, spec):
    back = eq_checked(model, task, spec)
    return max(float(np.max(np.abs(back[n] - weights[n]))) for n in weights)


def eq_orders(n, epochs, seed):
    '''bench.external.epoch_orders: the harness's per-epoch shuffle, runner.Epochs's calls.'''
    from bench import data as data_mod
    rng = np.random.default_rng(seed)
    ids = np.arange(int(n), dtype=np.int64)
    return np.stack([data_mod.shuffled(ids, ids, rng)[0] for _ in range(int(epochs))])


def eq_predict(model, x, batch_size):
    return np.asarray(model.predict(x, batch_size=int(batch_size), verbose=0), dtype=np.float32)


def eq_features(model, x):
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)


def eq_save(path, model, task, spec, logits=None, loss=None, features=None):
    '''work()'s keys: features, or logits, loss and after/NAME (the weights after training).'''
    out = {}
    if features is not None:
        out['features'] = features
    else:
        out['logits'], out['loss'] = logits, np.float64(loss)
        out.update({f'after/{name}': value for name, value in eq_checked(model, task, spec).items()})
    np.savez(path, **out)
"))
eqpy <- import_main(convert = FALSE)

run_equivalence <- function(device, precision) {
  folder <- request$folder
  infos <- list()
  for (task in request$tasks) {
    hp <- request$specs[[task]]
    spec_py <- eqpy$eq_spec(task, hp)
    loaded <- eqpy$eq_load(folder, task, spec_py)
    weights <- py_get_item(loaded, 0L)
    inputs <- py_get_item(loaded, 1L)
    set_seed(request$seed)
    model <- switch(task, cnn = build_cnn(hp, device), rnn = build_rnn(hp, device),
                    resnet50 = build_resnet50(hp, device))
    eqpy$eq_set_weights(model, task, weights)
    roundtrip <- py_to_r(eqpy$eq_roundtrip(model, task, weights, spec_py))
    state <- numerics(model, device, precision)
    layout <- function(x) if (task == "rnn") x else images_for(x, device)  # images arrive NCHW
    path <- file.path(folder, sprintf("r-keras-%s.npz", task))
    if (task == "resnet50") {
      eqpy$eq_save(path, model, task, spec_py,
                   features = eqpy$eq_features(model, layout(py_get_item(inputs, "x_eval"))))
    } else {
      logits <- eqpy$eq_predict(model, layout(py_get_item(inputs, "x_eval")), hp$batch_size)
      x_train <- layout(py_get_item(inputs, "x_train"))
      y_train <- py_get_item(inputs, "y_train")
      orders_path <- request$epoch_orders[[task]]
      orders <- if (!is.null(orders_path)) np$load(orders_path) else
        eqpy$eq_orders(py_get_item(x_train$shape, 0L), as.integer(hp$epochs), as.integer(request$seed))
      m <- train(model, x_train, y_train, hp, device, orders)  # as the benchmark trains: one fit()
      eqpy$eq_save(path, model, task, spec_py, logits = logits, loss = tail(m$losses, 1))
    }
    infos[[task]] <- list(framework = "r-keras", conventions = conventions_for(task, device, state),
                          roundtrip = roundtrip)
  }
  infos
}

if (equivalence) {
  device <- init_device(request$device, request$precision)
  infos <- tryCatch(run_equivalence(device, request$precision), error = function(e) fail(conditionMessage(e)))
  cat(toJSON(infos, auto_unbox = TRUE, digits = NA, null = "null"), "\n", sep = "")  # the last stdout line
  quit(save = "no", status = 0L)
}

# ---------------------------------------------------------------- the task

device <- init_device(request$device, request$precision)
arrays <- lapply(request$arrays, function(path) np$load(path))

versions <- list(
  framework_version = sprintf("R %s.%s, reticulate %s, keras %s (tensorflow %s)",
                              R.version$major, R.version$minor, packageVersion("reticulate"),
                              keras$`__version__`, tf$`__version__`),
  cuda = tf$sysconfig$get_build_info()$cuda_version,
  cudnn = tf$sysconfig$get_build_info()$cudnn_version,
  env = list(r = R.version.string, reticulate = as.character(packageVersion("reticulate")))
)

result <- tryCatch({
  set_seed(request$seed)
  if (spec$name == "resnet50") {
    model <- build_resnet50(spec, device)
    state <- numerics(model, device, request$precision)
    m <- extract(model, arrays$x_test, spec, device)
    c(m, list(params = count_params(model), conventions = conventions_for("resnet50", device, state)))
  } else {
    images <- spec$name == "cnn"
    model <- if (images) build_cnn(spec, device) else build_rnn(spec, device)
    state <- numerics(model, device, request$precision)
    x_train <- if (images) images_for(arrays$x_train, device) else arrays$x_train
    x_test <- if (images) images_for(arrays$x_test, device) else arrays$x_test
    m <- train(model, x_train, arrays$y_train, spec, device, np$load(request$epoch_orders))
    logits <- model$predict(x_test, batch_size = as.integer(spec$batch_size), verbose = 0L)
    np$save(request$logits, np$asarray(logits, dtype = "float32"))
    c(m, list(params = count_params(model), conventions = conventions_for(spec$name, device, state)))
  }
}, error = function(e) fail(conditionMessage(e)))

write_json(c(result, versions), request$measurement, auto_unbox = TRUE, digits = NA, null = "null")
