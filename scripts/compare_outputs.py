#!/usr/bin/env python3
"""An independent checker of a qdl accuracy run against reference outputs (scripts/models).

    python3 scripts/compare_outputs.py --accuracy-log RUN_DIR/mlperf_log_accuracy.json \\
        --reference DIR/<name>/reference --spec DIR/<name>/frontend.toml [--atol 1e-4 --rtol 1e-3]

The accuracy log is LoadGen's: a JSON list of {"qsl_idx": int, "data": hex of the sample's raw
output bytes, ...}. Each sample's bytes are the spec's `outputs` ([workload.spec], output_kind =
"tensors") concatenated in declared order as raw little-endian elements. They are split into the
tensors and compared with DIR/<name>/reference/<output>.npy (N samples stacked on axis 0):
floats pass when |got - want| <= atol + rtol * |want| (NaN only matches NaN), integers must be
equal. Every qsl_idx 0..N-1 must appear exactly once.

Exit 0 with "compare: N/N samples within atol=.. rtol=..; max abs error E (tensor T)", or 1 with
the first 10 failures (2 for unusable arguments or files). Needs numpy; Python 3.11 (tomllib).
"""

import argparse
import json
import os
import sys
import tomllib

try:
    import numpy as np
except ImportError:
    print("compare: numpy is missing: run scripts/setup (or pip install -r scripts/requirements-models.txt)", file=sys.stderr)
    sys.exit(2)

DTYPES = {"i8": "|i1", "u8": "|u1", "i32": "<i4", "i64": "<i8", "f16": "<f2", "f32": "<f4"}
MAX_SHOWN = 10


class Unusable(Exception):
    pass


def load_spec(path):
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Unusable(f"cannot read the spec {path}: {e}")
    spec = doc.get("workload", {}).get("spec")
    if spec is None:
        raise Unusable(f"{path} has no [workload.spec]")
    if spec.get("output_kind") != "tensors":
        raise Unusable(f"{path}: output_kind is {spec.get('output_kind')!r}, this checker needs \"tensors\"")
    outputs = []
    for t in spec.get("outputs", []):
        dt = DTYPES.get(t.get("dtype"))
        if dt is None:
            raise Unusable(f"{path}: output {t.get('name')!r} has unknown dtype {t.get('dtype')!r}")
        shape = tuple(int(d) for d in t.get("shape", []))
        if not shape or any(d <= 0 for d in shape):
            raise Unusable(f"{path}: output {t.get('name')!r} needs a non-empty shape of positive dimensions")
        outputs.append((t["name"], np.dtype(dt), shape))
    if not outputs:
        raise Unusable(f"{path}: no outputs declared")
    return outputs


def load_reference(ref_dir, outputs):
    refs, n = {}, None
    for name, dtype, shape in outputs:
        path = os.path.join(ref_dir, f"{name}.npy")
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise Unusable(f"cannot read the reference {path}: {e}")
        if a.dtype.newbyteorder("=") != dtype.newbyteorder("="):
            raise Unusable(f"{path}: dtype {a.dtype} where the spec says {dtype}")
        if a.shape[1:] != shape:
            raise Unusable(f"{path}: per-sample shape {a.shape[1:]} where the spec says {shape}")
        if n is not None and a.shape[0] != n:
            raise Unusable(f"{path}: {a.shape[0]} samples, other references have {n}")
        n = a.shape[0]
        refs[name] = a
    return refs, n


def load_log(path):
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        raise Unusable(f"cannot read the accuracy log {path}: {e}")
    if not isinstance(entries, list):
        raise Unusable(f"{path} is not a JSON list")
    return entries


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accuracy-log", required=True, help="LoadGen's mlperf_log_accuracy.json")
    p.add_argument("--reference", required=True, help="the directory of <output>.npy reference files")
    p.add_argument("--spec", required=True, help="the frontend.toml with [workload.spec]")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    args = p.parse_args()

    try:
        outputs = load_spec(args.spec)
        refs, n = load_reference(args.reference, outputs)
        entries = load_log(args.accuracy_log)
    except Unusable as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2

    sample_bytes = sum(dt.itemsize * int(np.prod(shape)) for _, dt, shape in outputs)
    failures, seen = [], {}
    max_err, max_tensor = 0.0, outputs[0][0]
    bad_samples = set()

    def fail(idx, msg):
        if idx is not None:
            bad_samples.add(idx)
        failures.append(msg)

    for k, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("qsl_idx"), int) or not isinstance(e.get("data"), str):
            fail(None, f"entry {k}: not an object with an integer qsl_idx and a hex data string")
            continue
        idx = e["qsl_idx"]
        if not 0 <= idx < n:
            fail(None, f"entry {k}: qsl_idx {idx} outside 0..{n - 1}")
            continue
        seen[idx] = seen.get(idx, 0) + 1
        if seen[idx] > 1:
            fail(idx, f"sample {idx}: appears more than once (entry {k})")
            continue
        try:
            raw = bytes.fromhex(e["data"])
        except ValueError:
            fail(idx, f"sample {idx}: data is not hex")
            continue
        if len(raw) != sample_bytes:
            fail(idx, f"sample {idx}: {len(raw)} output bytes, the spec's outputs are {sample_bytes}")
            continue
        off = 0
        for name, dtype, shape in outputs:
            count = int(np.prod(shape))
            got = np.frombuffer(raw, dtype=dtype, count=count, offset=off).reshape(shape)
            off += count * dtype.itemsize
            want = refs[name][idx]
            if dtype.kind == "f":
                g, w = got.astype(np.float64), want.astype(np.float64)
                diff = np.abs(g - w)
                nan_g, nan_w = np.isnan(g), np.isnan(w)
                ok = (diff <= args.atol + args.rtol * np.abs(w)) | (nan_g & nan_w)
                ok &= nan_g == nan_w
                finite = diff[np.isfinite(diff)]
                if finite.size and finite.max() > max_err:
                    max_err, max_tensor = float(finite.max()), name
                if not np.isfinite(diff[~(nan_g & nan_w)]).all():
                    max_err, max_tensor = float("inf"), name
            else:
                ok = got == want
                if not ok.all():
                    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
                    if err > max_err:
                        max_err, max_tensor = err, name
            if not ok.all():
                bad = np.argwhere(~ok)
                at = tuple(int(i) for i in bad[0])
                fail(
                    idx,
                    f"sample {idx} tensor {name}: {len(bad)} of {count} elements out of tolerance; "
                    f"first at {list(at)}: got {got[at].item()!r}, want {want[at].item()!r}",
                )

    missing = [i for i in range(n) if i not in seen]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        fail(None, f"{len(missing)} of {n} samples missing from the log: {shown}")

    tol = f"atol={args.atol:g} rtol={args.rtol:g}"
    good = n - len(bad_samples) - len(missing)
    if failures:
        print(f"compare: FAILED: {good}/{n} samples within {tol}; max abs error {max_err:.3g} (tensor {max_tensor})")
        for msg in failures[:MAX_SHOWN]:
            print(f"  {msg}")
        if len(failures) > MAX_SHOWN:
            print(f"  ... and {len(failures) - MAX_SHOWN} more")
        return 1
    print(f"compare: {n}/{n} samples within {tol}; max abs error {max_err:.3g} (tensor {max_tensor})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
