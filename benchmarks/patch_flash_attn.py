"""Patch an extracted flash-attn 2.x source distribution so that it builds only the kernels MosaicBERT runs.

    python benchmarks/patch_flash_attn.py SRC_DIR [--head-dims 64 128]   # the restricted build (default)
    python benchmarks/patch_flash_attn.py SRC_DIR --all-kernels           # every kernel, as upstream builds it

Upstream compiles 72 kernel files (head dims 32-256, causal and not, split-KV) with every switch of
`static_switch.h` on: hours on a few cores. MosaicBERT calls the varlen kernel non-causally with ALiBi slopes,
attention dropout in training, head dim 64 (base and large) or 128. The restricted build keeps, for the given head
dims, fp16 and bf16: the forward, backward and split-KV forward files (non-causal), and compiles them with

  -DFLASHATTENTION_DISABLE_LOCAL, -DFLASHATTENTION_DISABLE_SOFTCAP  upstream's switches: sliding windows and softcap
                                                                    are never used; the API refuses them clearly
  -DFLASHATTENTION_DISABLE_CAUSAL                                   added here: the dispatcher refuses causal=True
                                                                    instead of referencing the causal kernels

Dropout, ALiBi and uneven head dims stay on. The head-dim dispatch (HEADDIM_SWITCH) accepts only the head dims whose
kernel was built, rounded up as upstream does (33-64 -> 64, 97-128 -> 128), and refuses the others with a clear
error instead of an undefined symbol at import.

Every edit checks the text it replaces is there exactly as expected and exits with an error otherwise (another
flash-attn version needs this script reviewed). Both modes make setup.py work offline and with current torch:
bdist_wheel from setuptools when the `wheel` package is absent, no setup_requires for setuptools to download, and
--cxx-std c++20 for torch >= 2.13, whose headers refuse C++17 (setup.py pins it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

UPSTREAM_HEAD_DIMS = (32, 64, 96, 128, 192, 256)  # the kernel sizes of flash-attn 2.x, in HEADDIM_SWITCH's order
KERNEL_LINE = re.compile(
    r'^\s*"csrc/flash_attn/src/(flash_(fwd|bwd|fwd_split)_hdim(\d+)_(fp16|bf16)(_causal)?_sm80\.cu)",\n',
    re.MULTILINE)
DEFINES = ["-DFLASHATTENTION_DISABLE_LOCAL", "-DFLASHATTENTION_DISABLE_SOFTCAP", "-DFLASHATTENTION_DISABLE_CAUSAL"]


class PatchError(RuntimeError):
    pass


def replace_once(text: str, old: str, new: str, where: str, count: int = 1) -> str:
    found = text.count(old)
    if found != count:
        raise PatchError(f"{where}: expected {count} occurrence(s) of {old!r}, found {found}")
    return text.replace(old, new)


def patch_offline(setup: str, cxx_std: str) -> str:
    """What any offline build needs, whatever kernels it keeps."""
    if cxx_std != "c++17":  # torch >= 2.13's headers need C++20; setup.py pins C++17 for host and nvcc alike
        setup = replace_once(setup, '    "-std=c++17",\n', f'    "-std={cxx_std}",\n', "setup.py")
        setup = replace_once(setup, 'compiler_c17_flag=["-O3", "-std=c++17"]',
                             f'compiler_c17_flag=["-O3", "-std={cxx_std}"]', "setup.py")
    # setuptools >= 70.1 has bdist_wheel itself; the `wheel` package may not be installed
    setup = replace_once(
        setup, "from wheel.bdist_wheel import bdist_wheel as _bdist_wheel\n",
        "try:\n"
        "    from wheel.bdist_wheel import bdist_wheel as _bdist_wheel\n"
        "except ImportError:\n"
        "    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel\n",
        "setup.py")
    # setuptools tries to download missing setup_requires (the ninja *Python package* even when the ninja binary
    # is on PATH); build_flash_attn.sh checks for ninja itself
    requires = '    setup_requires=[\n        "packaging",\n        "psutil",\n        "ninja",\n    ],\n'
    return replace_once(setup, requires, "", "setup.py")


def patch_sources(setup: str, src: Path, head_dims: list[int]) -> tuple[str, list[str]]:
    lines = KERNEL_LINE.findall(setup)
    if len(lines) != 72:
        raise PatchError(f"setup.py: expected the 72 kernel files of flash-attn 2.8, found {len(lines)}")
    kept = []

    def keep_or_drop(m: re.Match) -> str:
        name, _kind, dim, _dtype, causal = m.groups()
        if int(dim) in head_dims and not causal:
            kept.append(name)
            return m.group(0)
        return ""

    setup = KERNEL_LINE.sub(keep_or_drop, setup)
    expected = 3 * 2 * len(head_dims)  # (fwd, bwd, split-KV fwd) x (fp16, bf16) per head dim
    if len(kept) != expected:
        raise PatchError(f"setup.py: kept {len(kept)} kernel files, expected {expected}: {kept}")
    missing = [k for k in kept if not (src / "csrc/flash_attn/src" / k).is_file()]
    if missing:
        raise PatchError(f"kernel files listed in setup.py but absent: {missing}")
    flags = ", ".join(f'"{d}"' for d in DEFINES)
    # flash_api.cpp (host compiler) and the kernels (nvcc) must see the same switches
    setup = replace_once(setup, '"cxx": compiler_c17_flag,', f'"cxx": compiler_c17_flag + [{flags}],', "setup.py")
    setup = replace_once(setup, '"nvcc": append_nvcc_threads(nvcc_flags + cc_flag),',
                         f'"nvcc": append_nvcc_threads(nvcc_flags + cc_flag + [{flags}]),', "setup.py")
    return setup, kept


def headdim_switch(head_dims: list[int]) -> str:
    """HEADDIM_SWITCH over the built kernels: head dim d runs the smallest upstream kernel >= d, as upstream does;
    a head dim whose kernel was not built is refused (TORCH_CHECK raises a RuntimeError in Python)."""
    ranges = [(UPSTREAM_HEAD_DIMS[UPSTREAM_HEAD_DIMS.index(d) - 1] if d != UPSTREAM_HEAD_DIMS[0] else 0, d)
              for d in head_dims]
    accepted = " || ".join(f"(HEADDIM > {lo} && HEADDIM <= {hi})" for lo, hi in ranges)
    described = ", ".join(f"{lo + 1}-{hi}" for lo, hi in ranges)
    body = [
        "#define HEADDIM_SWITCH(HEADDIM, ...)",
        "  [&] {",
        f"    TORCH_CHECK({accepted},",
        f'                "This flash-attn build has kernels for head dims {described} only, got ", HEADDIM,',
        '                "; build it with all kernels to run other head dims");',
    ]
    for i, d in enumerate(head_dims):
        last = i == len(head_dims) - 1
        cond = "" if last else f"if (HEADDIM <= {d}) "
        body += [f"    {'' if i == 0 else '} else '}{cond}{{",
                 f"      constexpr static int kHeadDim = {d};",
                 "      return __VA_ARGS__();"]
    body += ["    }", "  }()"]
    width = max(len(line) for line in body) + 1
    return "\n".join(line.ljust(width) + "\\" for line in body[:-1]) + "\n" + body[-1] + "\n"


CAUSAL_SWITCH = r"""
// Non-causal-only builds: refuse causal=True in the dispatcher, so that the causal kernels are never referenced.
#ifdef FLASHATTENTION_DISABLE_CAUSAL
  #define CAUSAL_SWITCH(COND, CONST_NAME, ...)                                                          \
  [&] {                                                                                                 \
    TORCH_CHECK(!(COND), "This flash-attn build has no causal kernels (non-causal attention only)");    \
    constexpr static bool CONST_NAME = false;                                                           \
    return __VA_ARGS__();                                                                               \
  }()
#else
  #define CAUSAL_SWITCH BOOL_SWITCH
#endif
"""


def patch_static_switch(text: str, head_dims: list[int]) -> str:
    m = re.search(r"#define HEADDIM_SWITCH\(HEADDIM, \.\.\.\).*?\}\(\)\n", text, re.DOTALL)
    if m is None:
        raise PatchError("static_switch.h: no HEADDIM_SWITCH definition")
    dims = [int(d) for d in re.findall(r"constexpr static int kHeadDim = (\d+);", m.group(0))]
    if tuple(dims) != UPSTREAM_HEAD_DIMS:
        raise PatchError(f"static_switch.h: HEADDIM_SWITCH dispatches {dims}, expected {list(UPSTREAM_HEAD_DIMS)}")
    if text[m.end():].strip():
        raise PatchError("static_switch.h: text after HEADDIM_SWITCH, expected it to end the file")
    for feature in ("LOCAL", "SOFTCAP"):  # the switches the defines turn off must exist
        if f"#ifdef FLASHATTENTION_DISABLE_{feature}" not in text:
            raise PatchError(f"static_switch.h: no FLASHATTENTION_DISABLE_{feature} switch")
    if "CAUSAL_SWITCH" in text:
        raise PatchError("static_switch.h: already has a CAUSAL_SWITCH (patched twice?)")
    return text[:m.start()] + headdim_switch(head_dims) + CAUSAL_SWITCH


def patch_flash_api(text: str) -> str:
    for feature in ("LOCAL", "SOFTCAP"):  # the API must refuse what the build leaves out, not ignore it
        if f"#ifdef FLASHATTENTION_DISABLE_{feature}" not in text:
            raise PatchError(f"flash_api.cpp: no check under FLASHATTENTION_DISABLE_{feature}")
    # the forward and backward dispatchers; the split-KV forward goes through the same forward dispatcher
    return replace_once(text, "BOOL_SWITCH(params.is_causal, Is_causal, [&] {",
                        "CAUSAL_SWITCH(params.is_causal, Is_causal, [&] {", "flash_api.cpp", count=2)


def mark_head_dims(text: str, head_dims: list[int]) -> str:
    """The package says which head dims it has kernels for: MosaicBERT's "auto" then picks flash-attn only for
    those (an unbuilt head dim can crash the process instead of raising)."""
    if "KERNEL_HEAD_DIMS" in text:
        raise PatchError("flash_attn/__init__.py: KERNEL_HEAD_DIMS is already set (patched twice?)")
    return (text.rstrip("\n") + "\n\n# this build has kernels for these head dims only (benchmarks/patch_flash_attn.py)"
            f"\nKERNEL_HEAD_DIMS = {tuple(head_dims)}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="the extracted source distribution (the folder holding setup.py)")
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128],
                   help=f"head dims to build kernels for, among {list(UPSTREAM_HEAD_DIMS)}")
    p.add_argument("--all-kernels", action="store_true", help="keep every kernel (only the offline fixes)")
    p.add_argument("--cxx-std", default="c++17", choices=["c++17", "c++20"],
                   help="C++ standard for flash_api.cpp and the kernels (c++20 for torch >= 2.13)")
    args = p.parse_args(argv)
    head_dims = sorted(set(args.head_dims))
    if not set(head_dims) <= set(UPSTREAM_HEAD_DIMS):
        p.error(f"--head-dims must be among {list(UPSTREAM_HEAD_DIMS)}, got {head_dims}")
    paths = {name: args.src / name for name in
             ("setup.py", "csrc/flash_attn/src/static_switch.h", "csrc/flash_attn/flash_api.cpp",
              "flash_attn/__init__.py")}
    try:
        texts = {name: path.read_text() for name, path in paths.items()}
        new = dict(texts)
        new["setup.py"] = patch_offline(texts["setup.py"], args.cxx_std)
        if not args.all_kernels:
            new["setup.py"], kept = patch_sources(new["setup.py"], args.src, head_dims)
            new["csrc/flash_attn/src/static_switch.h"] = patch_static_switch(
                texts["csrc/flash_attn/src/static_switch.h"], head_dims)
            new["csrc/flash_attn/flash_api.cpp"] = patch_flash_api(texts["csrc/flash_attn/flash_api.cpp"])
            new["flash_attn/__init__.py"] = mark_head_dims(texts["flash_attn/__init__.py"], head_dims)
    except (PatchError, OSError) as e:
        print(f"patch_flash_attn: {e}", file=sys.stderr)
        return 1
    for name, text in new.items():  # written only once every edit applied
        if text != texts[name]:
            paths[name].write_text(text)
    print(f"patch_flash_attn: -std={args.cxx_std}")
    if args.all_kernels:
        print("patch_flash_attn: all kernels (setup.py: offline fixes only)")
    else:
        print(f"patch_flash_attn: head dims {head_dims}, non-causal, {len(kept)} kernel files: {' '.join(kept)}")
        print(f"patch_flash_attn: defines {' '.join(DEFINES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
