#!/usr/bin/env python3
"""Compile the CUDA kernels with NVRTC for one variant and dump their SASS — no GPU needed.

Usage: sass.py [--arch sm_90] [--d 128] [--bk 4] [--bv 4] [--kernel tq_decode_staged16] [--out DIR]

Needs libnvrtc (pip: nvidia-cuda-nvrtc) on LD_LIBRARY_PATH or in the venv of this Python, and
nvdisasm (pip: nvidia-cuda-nvdisasm). Prints, per kernel, registers, shared memory and an
instruction histogram; writes the full listing to DIR/<kernel>.sass.
"""
import argparse, ctypes, glob, os, re, subprocess, sys, collections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTS = ["common.cuh", "append.cu", "decode.cu", "decode_fast.cu", "prefill.cu", "combine.cu"]


def find(pattern):
    for base in [sys.prefix] + sys.path:
        hits = glob.glob(os.path.join(base, "**", pattern), recursive=True)
        if hits:
            return hits[0]
    return None


def nvrtc_compile(src, opts):
    lib = ctypes.CDLL(find("libnvrtc.so.*") or "libnvrtc.so")
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"k.cu", 0, None, None) == 0
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        sys.exit("compile failed:\n" + log.value.decode())
    # ptxas -v: registers, spills and shared memory per kernel.
    for line in log.value.decode().splitlines():
        if "registers" in line or "spill" in line or "Compiling entry" in line:
            print("ptxas:", line.strip())
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, buf)
    return buf.raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--bk", type=int, default=4)
    ap.add_argument("--bv", type=int, default=4)
    ap.add_argument("--kernel", default="tq_decode")
    ap.add_argument("--out", default="/tmp/tq-sass")
    a = ap.parse_args()
    src = "\n".join(open(os.path.join(ROOT, "kernels", p)).read() for p in PARTS)
    stages = 2 if int("".join(c for c in a.arch[3:] if c.isdigit())) >= 90 else 4  # compile::fast_stages
    opts = [f"--gpu-architecture={a.arch}", f"-DHEAD_DIM={a.d}", f"-DBITS_K={a.bk}", f"-DBITS_V={a.bv}",
            f"-DFD_STAGES={stages}", f"-DFD_MERGE_PAIR_BYTES={512 * (1 + (a.d // 16 + 1) // 2)}",  # compile::fast_merge_pair_bytes
            "--std=c++17", "-Xptxas=-v"]
    cubin = nvrtc_compile(src, opts)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "k.cubin")
    open(path, "wb").write(cubin)
    nvdisasm = find("nvdisasm") or "nvdisasm"
    text = subprocess.run([nvdisasm, "-c", "-fun", "", path] if False else [nvdisasm, "-c", path],
                          capture_output=True, text=True, check=True).stdout
    # Split per function.
    funcs = re.split(r"\n\s*\.section\s+\.text\.", text)
    for f in funcs[1:]:
        name = f.split(",")[0].strip()
        if a.kernel not in name:
            continue
        ins = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", f)
        hist = collections.Counter(i.split(".")[0] for i in ins)
        open(os.path.join(a.out, name + ".sass"), "w").write(f)
        print(f"{name}: {len(ins)} instructions")
        print("   ", ", ".join(f"{k} {v}" for k, v in hist.most_common(25)))


if __name__ == "__main__":
    main()
