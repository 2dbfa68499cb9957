# Julia Knet: the three tasks of TASKS.md, the same models as bench/frameworks/pytorch.py.
# The harness writes a request JSON (task, sized hyperparameters, .npy arrays in NCHW) and
# runs this file; it writes the measurement JSON and the test logits the request names.
# Exit code 3: the GPU asked for is absent (never a silent fall-back to the CPU).
using Knet, CUDA, JSON3, NPZ, Pkg, Random, Statistics

const REQUEST = JSON3.read(read(ARGS[1], String))
const SPEC = REQUEST.spec

function fail(message, status=1)
    open(REQUEST.measurement, "w") do io
        JSON3.write(io, Dict("error" => message))
    end
    println(stderr, "error: ", message)
    exit(status)
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
device_array(x) = convert(Knet.array_type[], x)
count_params(model) = sum(length, params(model))

# Row-major NCHW from NumPy arrives as (N, C, H, W); Knet wants (W, H, C, N).
knet_images(x) = permutedims(Float32.(x), (4, 3, 2, 1))

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
    times, losses = Float64[], Float64[]
    for epoch in 1:spec.epochs
        order = randperm(rng, n)
        synchronize(device)
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
        push!(losses, total / (n ÷ bs))
        println(stderr, "[knet $(spec.name)] epoch $epoch/$(spec.epochs): $(round(times[end]; digits=2)) s, mean loss $(round(losses[end]; digits=4))")
    end
    times, losses
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
    start = seconds()
    features = nothing
    for i in spec.warmup_batches:spec.warmup_batches + spec.batches - 1
        features = Array(model(batch(i)))
    end
    synchronize(device)
    Dict("time_total_s" => seconds() - start, "images" => spec.batches * bs,
         "features_shape" => [size(features, 2), size(features, 1)])
end

# ---------------------------------------------------------------- the task

function main()
    device = init_device(REQUEST.device)
    REQUEST.precision == "fp32" || fail("knet runs fp32 only, asked for $(REQUEST.precision)")
    arrays = Dict(String(k) => npzread(String(v)) for (k, v) in pairs(REQUEST.arrays))
    versions = Dict(
        "framework_version" => "Knet $(version_of(Knet)) (Julia $(VERSION), CUDA.jl $(version_of(CUDA)))",
        "cuda" => device == "gpu" ? string(CUDA.runtime_version()) : nothing,
        "cudnn" => device == "gpu" ? string(CUDA.CUDNN.version()) : nothing,
        "env" => Dict("julia" => string(VERSION), "knet" => version_of(Knet)))
    result = if SPEC.name == "resnet50"
        model = build_resnet50(SPEC)
        merge(extract(model, knet_images(arrays["x_test"]), SPEC, device),
              Dict("params" => count_params(model),
                   "conventions" => Dict("resnet_conv_bias" => false, "weights" => "random",
                                         "timing" => "timed in Julia", "source" => "ResNet-50 written with Knet")))
    else
        images = SPEC.name == "cnn"
        model = images ? build_cnn(SPEC) : build_rnn(SPEC)
        x_train = images ? knet_images(arrays["x_train"]) : Int.(arrays["x_train"])
        x_test = images ? knet_images(arrays["x_test"]) : Int.(arrays["x_test"])
        times, losses = train(model, x_train, Int.(arrays["y_train"]), SPEC, device, REQUEST.seed)
        npzwrite(String(REQUEST.logits), Float32.(predict(model, x_test, SPEC)))
        conventions = images ? Dict("layout" => "WHCN (Knet)", "init" => "xavier_uniform, zero biases",
                                    "timing" => "timed in Julia") :
                      Dict("gru_bias" => "two vectors per gate (Knet RNN, cuDNN layout)", "gru_biases" => 600,
                           "timing" => "timed in Julia")
        Dict("epoch_times_s" => times, "losses" => losses, "params" => count_params(model),
             "conventions" => conventions)
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
