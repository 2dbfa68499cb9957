# Julia Knet: the three tasks of TASKS.md, the same models as bench/frameworks/pytorch.py.
# The harness writes a request JSON (task, sized hyperparameters, .npy arrays in NCHW) and
# runs this file; it writes the measurement JSON and the test logits the request names.
# Exit code 3: the GPU asked for is absent (never a silent fall-back to the CPU).
# A precision this file has no path for (bench/precisions.py) writes {"skipped": reason} as the
# measurement and exits 0: the harness records the task as skipped with that reason.
#   fp32      Float32 arrays; CUDA.math_mode DEFAULT_MATH (cuBLAS without TF32). Knet's conv4 and
#             RNN build their cuDNN descriptors without a math type, so cuDNN's default permits
#             TF32 on compute capability 8.0+: NVIDIA_TF32_OVERRIDE=0, which the harness sets for
#             every precision but tf32, is what forbids it there. The report reads it back.
#   tf32      the same Float32 model under CUDA.math_mode!(CUDA.FAST_MATH; precision=:TensorFloat32)
#             (cuBLAS TF32 tensor-op math) with NVIDIA_TF32_OVERRIDE unset; GPU 8.0+ only.
#   amp-fp16  skipped: Knet has no mixed-precision training (no autocast, no loss scaler) and its
#             optimizers update each Param in its own element type.
#   amp-bf16  skipped: no mixed precision and no bfloat16 in Knet's cuDNN descriptors or in
#             CUDA.jl 3.13's cuDNN wrapper.
using Knet, CUDA, JSON3, NPZ, Pkg, Random, Statistics

const REQUEST = JSON3.read(read(ARGS[1], String))
const SPEC = REQUEST.spec
# The mode (bench/modes.py): "reference" or "tuned"; absent means reference.
const MODES = ("reference", "tuned")
const MODE = String(get(REQUEST, :mode, "reference"))

function fail(message, status=1)
    open(REQUEST.measurement, "w") do io
        JSON3.write(io, Dict("error" => message))
    end
    println(stderr, "error: ", message)
    exit(status)
end

function skip_task(reason)
    open(REQUEST.measurement, "w") do io
        JSON3.write(io, Dict("skipped" => reason))
    end
    println(stderr, "skipped: ", reason)
    exit(0)
end

# ---------------------------------------------------------------- framework and device

function init_device(device)
    if device == "gpu"
        CUDA.functional() || fail("no GPU found: CUDA.functional() is false (check the driver and nvidia-smi)", 3)
        Knet.array_type[] = CuArray{Float32}
    else
        Knet.array_type[] = Array{Float32}
    end
    device
end

synchronize(device) = device == "gpu" ? CUDA.synchronize() : nothing
version_of(m::Module) = string(Pkg.dependencies()[Base.PkgId(m).uuid].version)
seconds() = time_ns() / 1e9
# Unix seconds: the harness cuts the telemetry it samples from outside to these timed sections.
unix_time() = time()

# Peak device memory (a framework file's peak_device_memory): the high watermark of CUDA.jl's
# stream-ordered memory pool (CU_MEMPOOL_ATTR_USED_MEM_HIGH, set back to zero on each call, as
# the driver allows), which Knet's CuArrays are allocated from; nothing on the CPU.
function peak_device_memory(device)
    device == "gpu" || return nothing
    dev = CUDA.device()
    if !(CUDA.version() >= v"11.3" && CUDA.stream_ordered(dev))  # CUDA.used_memory()'s condition
        return Dict("peak_bytes" => nothing, "counter" => nothing, "scope" => nothing,
                    "note" => "CUDA.jl is not on CUDA's stream-ordered memory pool here (a driver before 11.3, or JULIA_CUDA_MEMORY_POOL)")
    end
    pool = CUDA.memory_pool(dev)
    peak = Int(CUDA.attribute(UInt64, pool, CUDA.MEMPOOL_ATTR_USED_MEM_HIGH))
    CUDA.attribute!(pool, CUDA.MEMPOOL_ATTR_USED_MEM_HIGH, UInt64(0))
    Dict("peak_bytes" => peak, "counter" => "CUDA.jl memory pool attribute MEMPOOL_ATTR_USED_MEM_HIGH",
         "scope" => "since the last call")
end
device_array(x) = convert(Knet.array_type[], x)
count_params(model) = sum(length, params(model))

# Row-major NCHW from NumPy arrives as (N, C, H, W); Knet wants (W, H, C, N).
knet_images(x) = permutedims(Float32.(x), (4, 3, 2, 1))

# ---------------------------------------------------------------- precision

const PRECISIONS = ("fp32", "tf32", "amp-fp16", "amp-bf16")
const PRECISION_LIST = join(PRECISIONS, ", ")
const TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"
const TF32_CAPABILITY = v"8.0"
const DTYPE_NAMES = Dict{Type,String}(Float16 => "float16", Float32 => "float32", Float64 => "float64")
dtype_name(T::Type) = get(DTYPE_NAMES, T, lowercase(string(T)))
capability_text(c) = string(c.major, ".", c.minor)

# The texts of bench/precisions.skip_reason(precision, device, capability, "knet"), word for word.
function device_skip_reason(precision, device, capability)
    if precision == "tf32"
        device == "gpu" || return "knet: tf32 is a GPU precision (tensor cores of compute capability 8.0 or newer); a CPU has no TF32: run fp32 or amp-bf16 on the CPU"
        if capability !== nothing && capability < TF32_CAPABILITY
            return "knet: tf32 needs a GPU of compute capability 8.0 or newer; this GPU is " * capability_text(capability)
        end
    end
    if precision == "amp-fp16" && device != "gpu"
        return "knet: amp-fp16 is a GPU precision: fp16 arithmetic on a CPU is emulated and its loss scaling meaningless for a benchmark; run amp-bf16 on the CPU"
    end
    if precision == "amp-bf16" && device == "gpu" && capability !== nothing && capability < TF32_CAPABILITY
        return "knet: amp-bf16 needs a GPU of compute capability 8.0 or newer; this GPU is " * capability_text(capability) * " (run amp-fp16)"
    end
    nothing
end

# Knet's own reasons, after the device's.
function knet_skip_reason(precision, device)
    who = "knet $(version_of(Knet)) (CUDA.jl $(version_of(CUDA))) on the $(uppercase(device))"
    if precision == "amp-fp16"
        return "$who: no amp-fp16: Knet has no mixed-precision training (no autocast and no loss scaler, dynamic or static) and its optimizers update each Param in the Param's own element type, so Float16 parameters would be fp16 master weights; run fp32"
    elseif precision == "amp-bf16"
        return "$who: no amp-bf16: Knet has no mixed-precision training and no bfloat16 path (its cuDNN descriptors take Float16, Float32 and Float64 only, and CUDA.jl's cuDNN wrapper has no bfloat16 data type); run fp32"
    end
    nothing
end

# After init_device: skip what cannot run, set the math mode; the GPU's capability (or nothing).
function init_precision(precision, device)
    precision in PRECISIONS || fail("unknown precision $(repr(precision)); use one of $PRECISION_LIST")
    capability = device == "gpu" ? CUDA.capability(CUDA.device()) : nothing
    reason = device_skip_reason(precision, device, capability)
    reason === nothing && (reason = knet_skip_reason(precision, device))
    reason === nothing || skip_task(reason)
    if device == "gpu"
        CUDA.math_mode!(precision == "tf32" ? CUDA.FAST_MATH : CUDA.DEFAULT_MATH; precision=:TensorFloat32)
    end
    capability
end

function one_dtype(types)
    names = sort(unique(dtype_name.(collect(types))))
    length(names) == 1 ? names[1] : "mixed(" * join(names, ", ") * ")"
end

# conventions["precision"]: the fields of bench/precisions.state(), read back where Julia can.
# compute_dtype: the element type of the arrays the model returned; param_dtype: of its Params.
function precision_state(precision, device, capability, model, output_type)
    override = get(ENV, TF32_OVERRIDE, nothing)
    switches = Dict{String,Any}("Knet.array_type[]" => string(Knet.array_type[]), TF32_OVERRIDE => override)
    read_back = ["compute_dtype", "param_dtype"]
    if device == "gpu"
        mode = CUDA.math_mode()
        # NVIDIA_TF32_OVERRIDE=0 forbids TF32 in cuBLAS and cuDNN whatever is asked; without it cuDNN
        # may take TF32 on 8.0+ in every math mode (descriptors with cuDNN's default math type) and
        # cuBLAS does under FAST_MATH with precision :TensorFloat32.
        tf32 = capability >= TF32_CAPABILITY && override != "0"
        cublas_tf32 = tf32 && mode == CUDA.FAST_MATH && CUDA.math_precision() == :TensorFloat32
        push!(read_back, "tf32")
        switches["CUDA.math_mode()"] = string(mode)
        switches["CUDA.math_precision()"] = string(CUDA.math_precision())
        switches["CUDA.capability(CUDA.device())"] = capability_text(capability)
        switches["cuBLAS TF32"] = cublas_tf32
        switches["cuDNN TF32 (default math type, 8.0+)"] = tf32
        mechanism = (precision == "tf32" ? "CUDA.math_mode!(CUDA.FAST_MATH; precision=:TensorFloat32)" :
                     "CUDA.math_mode!(CUDA.DEFAULT_MATH)") *
                    "; Knet.array_type[] = CuArray{Float32}; cuDNN convolutions and RNN with cuDNN's default math type; " *
                    (override == "0" ? "NVIDIA_TF32_OVERRIDE=0 forbids TF32" : "NVIDIA_TF32_OVERRIDE unset")
    else
        tf32 = false  # a CPU has no TF32
        mechanism = "Knet.array_type[] = Array{Float32}: Float32 arrays on the CPU"
    end
    Dict("name" => precision, "tf32" => tf32, "compute_dtype" => dtype_name(output_type),
         "param_dtype" => one_dtype(eltype(value(p)) for p in params(model)),
         "loss_scaling" => "none", "loss_scaler" => nothing, "mechanism" => mechanism,
         "read_back" => sort(read_back), "switches" => switches)
end

# ---------------------------------------------------------------- mode

# conventions["mode"], the fields of bench/modes.state(). Tuned runs the reference code: Knet has
# no compiled or graph mode to turn on (AutoGrad.jl records each call's operations afresh), and
# the fast paths its documentation gives for these models, Float32 GPU arrays
# (Knet.array_type[] = CuArray{Float32}) with cuDNN's conv4, pool, batchnorm and RNN, are the
# reference's already.
const KNET_NO_SWITCH = "a Knet switch beyond the reference"
const KNET_NO_SWITCH_REASON = "Knet documents none for these models: it has no compiled or graph mode " *
    "(AutoGrad.jl's tape is recorded on every call), and its fast paths, Float32 arrays on the GPU " *
    "(Knet.array_type[] = CuArray{Float32}) with cuDNN's conv4, pool, batchnorm and RNN, are the " *
    "reference's already; tuned runs the reference code"

function mode_state(mode)
    not_applied = mode == "tuned" ? Dict(KNET_NO_SWITCH => KNET_NO_SWITCH_REASON) : Dict{String,String}()
    Dict("mode" => mode, "switches" => String[], "not_applied" => not_applied)
end

# ---------------------------------------------------------------- layers

struct Conv; w; b; pad; end
Conv(k::Int, cin::Int, cout::Int) = Conv(param(k, k, cin, cout; init=xavier_uniform), param0(1, 1, cout, 1), (k - 1) ÷ 2)
(c::Conv)(x) = conv4(c.w, x; padding=c.pad) .+ c.b

struct Dense; w; b; end
Dense(i::Int, o::Int; init=xavier_uniform) = Dense(param(o, i; init=init), param0(o))
(d::Dense)(x) = d.w * mat(x) .+ d.b

# ---------------------------------------------------------------- CNN

struct CNN; c1; c2; c3; c4; d1; d2; pconv; pdense; end

function build_cnn(spec)
    ch = spec.conv_channels
    k = spec.kernel_size
    CNN(Conv(k, spec.image_shape[1], ch[1]), Conv(k, ch[1], ch[2]), Conv(k, ch[2], ch[3]),
        Conv(k, ch[3], ch[4]), Dense(spec.conv_channels[4] * (spec.image_shape[2] ÷ 4) * (spec.image_shape[3] ÷ 4), spec.dense_units),
        Dense(spec.dense_units, spec.classes), spec.conv_dropout, spec.dense_dropout)
end

function (m::CNN)(x)
    x = relu.(m.c1(x))
    x = relu.(pool(m.c2(x); window=2, stride=2))
    x = dropout(x, m.pconv)  # active only while differentiating (training)
    x = relu.(m.c3(x))
    x = relu.(pool(m.c4(x); window=2, stride=2))
    x = dropout(x, m.pconv)
    x = relu.(m.d1(x))
    x = dropout(x, m.pdense)
    m.d2(x)
end

# ---------------------------------------------------------------- RNN

struct GRUClassifier; embedding; gru; dense; end

function build_rnn(spec)
    GRUClassifier(param(spec.embedding_dim, spec.max_features),
                  RNN(spec.embedding_dim, spec.gru_units; rnnType=:gru),  # cuDNN on GPU
                  Dense(spec.gru_units, spec.classes))
end

function (m::GRUClassifier)(tokens)
    embedded = m.embedding[:, tokens]     # (embedding, batch, time)
    outputs = m.gru(embedded)             # (hidden, batch, time)
    m.dense(outputs[:, :, end])           # the last time step
end

# ---------------------------------------------------------------- training, shared

(m::Union{CNN,GRUClassifier})(x, y) = nll(m(x), y)

batch_x(x::AbstractArray{<:Real,4}, idx) = device_array(x[:, :, :, idx])
batch_x(x::AbstractMatrix, idx) = x[idx, :] .+ 1  # token ids, 1-based
batch_y(y, idx) = y[idx] .+ 1                        # class labels, 1-based

function set_optimizer!(model, spec)
    for p in params(model)
        p.opt = spec.name == "cnn" ? Momentum(lr=spec.lr, gamma=spec.momentum) :
                Adam(lr=spec.lr, beta1=spec.beta1, beta2=spec.beta2, eps=spec.epsilon)
    end
end

function train(model, x, y, spec, device, seed)
    set_optimizer!(model, spec)
    rng = MersenneTwister(seed)  # one permutation per epoch from a seeded generator
    n = length(y)
    bs = spec.batch_size
    times, losses, windows = Float64[], Float64[], Vector{Float64}[]
    peak_device_memory(device)  # resets the counter: the epochs' peak alone
    for epoch in 1:spec.epochs
        order = randperm(rng, n)
        synchronize(device)
        opened = unix_time()
        start = seconds()
        total = 0.0
        for b in 1:(n ÷ bs)
            idx = order[(b - 1) * bs + 1:b * bs]
            loss = @diff model(batch_x(x, idx), batch_y(y, idx))
            for p in params(model)
                update!(p, grad(loss, p))
            end
            total += value(loss)
        end
        synchronize(device)
        push!(times, seconds() - start)
        push!(windows, [opened, unix_time()])
        push!(losses, total / (n ÷ bs))
        println(stderr, "[knet $(spec.name)] epoch $epoch/$(spec.epochs): $(round(times[end]; digits=2)) s, mean loss $(round(losses[end]; digits=4))")
    end
    times, losses, windows, peak_device_memory(device)
end

function predict(model, x, spec)
    n = x isa AbstractMatrix ? size(x, 1) : size(x, 4)
    bs = spec.batch_size
    chunks = [Array(model(batch_x(x, (b - 1) * bs + 1:b * bs))) for b in 1:(n ÷ bs)]
    permutedims(hcat(chunks...))  # (N, classes): NumPy reads it as written
end

# ---------------------------------------------------------------- ResNet-50

struct ConvBN; w; bn; moments; stride; pad; end
ConvBN(k, cin, cout; stride=1) = ConvBN(param(k, k, cin, cout; init=xavier_uniform),
                                        Param(device_array(bnparams(Float32, cout))), bnmoments(), stride, (k - 1) ÷ 2)
(c::ConvBN)(x) = batchnorm(conv4(c.w, x; padding=c.pad, stride=c.stride), c.moments, c.bn; training=false)

struct Bottleneck; a; b; c; shortcut; end
function Bottleneck(cin, filters, stride, project)
    Bottleneck(ConvBN(1, cin, filters), ConvBN(3, filters, filters; stride=stride),  # stride on the 3x3
               ConvBN(1, filters, 4 * filters), project ? ConvBN(1, cin, 4 * filters; stride=stride) : nothing)
end
function (b::Bottleneck)(x)
    y = b.c(relu.(b.b(relu.(b.a(x)))))
    relu.(y .+ (b.shortcut === nothing ? x : b.shortcut(x)))
end

struct ResNet50; stem; blocks; end
function build_resnet50(spec)
    blocks = Any[]
    cin = 64
    for (stage, (count, filters)) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)))
        for block in 1:count
            stride = stage > 1 && block == 1 ? 2 : 1
            push!(blocks, Bottleneck(cin, filters, stride, block == 1))
            cin = 4 * filters
        end
    end
    ResNet50(ConvBN(7, spec.image_shape[1], 64; stride=2), blocks)
end
function (r::ResNet50)(x)
    x = pool(relu.(r.stem(x)); window=3, stride=2, padding=1)
    for block in r.blocks
        x = block(x)
    end
    mat(mean(x; dims=(1, 2)))  # global average pooling: (2048, N)
end

function extract(model, x, spec, device)
    bs = spec.batch_size
    batch(i) = device_array(x[:, :, :, i * bs + 1:(i + 1) * bs])
    for i in 0:spec.warmup_batches - 1
        model(batch(i))  # cold start, untimed
    end
    synchronize(device)
    peak_device_memory(device)  # resets the counter: the timed batches' peak alone
    opened = unix_time()
    start = seconds()
    features = nothing
    for i in spec.warmup_batches:spec.warmup_batches + spec.batches - 1
        features = Array(model(batch(i)))
    end
    synchronize(device)
    elapsed = seconds() - start
    window = [opened, unix_time()]
    Dict("time_total_s" => elapsed, "images" => spec.batches * bs,
         "features_shape" => [size(features, 2), size(features, 1)],
         "timed_windows" => [window], "device_memory" => peak_device_memory(device)), eltype(features)
end

# ---------------------------------------------------------------- the task

function main()
    MODE in MODES || fail("unknown mode $(repr(MODE)); use one of $(join(MODES, ", "))", 2)
    device = init_device(REQUEST.device)
    precision = String(REQUEST.precision)
    capability = init_precision(precision, device)
    arrays = Dict(String(k) => npzread(String(v)) for (k, v) in pairs(REQUEST.arrays))
    versions = Dict(
        "framework_version" => "Knet $(version_of(Knet)) (Julia $(VERSION), CUDA.jl $(version_of(CUDA)))",
        "cuda" => device == "gpu" ? string(CUDA.runtime_version()) : nothing,
        "cudnn" => device == "gpu" ? string(CUDA.CUDNN.version()) : nothing,
        "env" => Dict("julia" => string(VERSION), "knet" => version_of(Knet)))
    Knet.seed!(REQUEST.seed)  # Random.seed! and CUDA.seed!: the same initial weights in every precision
    result = if SPEC.name == "resnet50"
        model = build_resnet50(SPEC)
        timing, output_type = extract(model, knet_images(arrays["x_test"]), SPEC, device)
        merge(timing,
              Dict("params" => count_params(model), "features_dtype" => lowercase(string(output_type)),
                   "conventions" => Dict("resnet_conv_bias" => false, "weights" => "random",
                                         "timing" => "timed in Julia", "source" => "ResNet-50 written with Knet",
                                         "precision" => precision_state(precision, device, capability,
                                                                        model, output_type),
                                         "mode" => mode_state(MODE))))
    else
        images = SPEC.name == "cnn"
        model = images ? build_cnn(SPEC) : build_rnn(SPEC)
        x_train = images ? knet_images(arrays["x_train"]) : Int.(arrays["x_train"])
        x_test = images ? knet_images(arrays["x_test"]) : Int.(arrays["x_test"])
        times, losses, windows, memory = train(model, x_train, Int.(arrays["y_train"]), SPEC, device, REQUEST.seed)
        logits = predict(model, x_test, SPEC)
        npzwrite(String(REQUEST.logits), Float32.(logits))
        conventions = images ? Dict{String,Any}("layout" => "WHCN (Knet)", "init" => "xavier_uniform, zero biases",
                                                "timing" => "timed in Julia") :
                      Dict{String,Any}("gru_bias" => "two vectors per gate (Knet RNN, cuDNN layout)", "gru_biases" => 600,
                                       "timing" => "timed in Julia")
        conventions["precision"] = precision_state(precision, device, capability, model, eltype(logits))
        conventions["mode"] = mode_state(MODE)
        Dict("epoch_times_s" => times, "losses" => losses, "params" => count_params(model),
             "conventions" => conventions, "timed_windows" => windows, "device_memory" => memory)
    end
    open(REQUEST.measurement, "w") do io
        JSON3.write(io, merge(result, versions))
    end
end

try
    main()
catch err
    err isa InterruptException && rethrow()
    fail(sprint(showerror, err))
end
