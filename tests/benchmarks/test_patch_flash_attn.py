"""benchmarks/patch_flash_attn.py on a miniature flash-attn source tree (the lines it edits, laid out as in 2.8.3),
and on the real source distribution when FLASH_ATTN_SDIST names one."""

import importlib.util
import os
import re
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("patch_flash_attn", ROOT / "benchmarks" / "patch_flash_attn.py")
patch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(patch)

DIMS = (32, 64, 96, 128, 192, 256)


def kernel_files():
    for kind in ("fwd", "bwd", "fwd_split"):
        for causal in ("", "_causal"):
            for d in DIMS:
                for dtype in ("fp16", "bf16"):
                    yield f"flash_{kind}_hdim{d}_{dtype}{causal}_sm80.cu"


def make_tree(root: Path) -> Path:
    src = root / "flash_attn-2.8.3"
    (src / "csrc/flash_attn/src").mkdir(parents=True)
    (src / "flash_attn").mkdir()
    (src / "flash_attn/__init__.py").write_text('__version__ = "2.8.3"\n')
    for name in kernel_files():
        (src / "csrc/flash_attn/src" / name).write_text("// kernel\n")
    sources = "".join(f'                "csrc/flash_attn/src/{n}",\n' for n in kernel_files())
    (src / "setup.py").write_text(
        "from wheel.bdist_wheel import bdist_wheel as _bdist_wheel\n"
        'nvcc_flags = [\n    "-O3",\n    "-std=c++17",\n]\n'
        '    compiler_c17_flag=["-O3", "-std=c++17"]\n'
        "ext_modules.append(CUDAExtension(\n"
        '            sources=[\n                "csrc/flash_attn/flash_api.cpp",\n' + sources + "            ],\n"
        "            extra_compile_args={\n"
        '                "cxx": compiler_c17_flag,\n'
        '                "nvcc": append_nvcc_threads(nvcc_flags + cc_flag),\n'
        "            },\n))\n"
        'setup(\n    install_requires=[\n        "torch",\n    ],\n'
        '    setup_requires=[\n        "packaging",\n        "psutil",\n        "ninja",\n    ],\n)\n')
    branches = "".join(f"    {'} else ' if i else ''}if (HEADDIM <= {d}) {{ \\\n"
                       f"      constexpr static int kHeadDim = {d}; \\\n      return __VA_ARGS__(); \\\n"
                       for i, d in enumerate(DIMS))
    (src / "csrc/flash_attn/src/static_switch.h").write_text(
        "#pragma once\n#ifdef FLASHATTENTION_DISABLE_LOCAL\n#endif\n#ifdef FLASHATTENTION_DISABLE_SOFTCAP\n#endif\n"
        "#define HEADDIM_SWITCH(HEADDIM, ...) \\\n  [&] { \\\n" + branches + "    } \\\n  }()\n")
    (src / "csrc/flash_attn/flash_api.cpp").write_text(
        "#ifdef FLASHATTENTION_DISABLE_SOFTCAP\n#endif\n#ifdef FLASHATTENTION_DISABLE_LOCAL\n#endif\n"
        + "BOOL_SWITCH(params.is_causal, Is_causal, [&] {\n    run();\n});\n" * 2)
    return src


def test_restricted_build_keeps_only_the_noncausal_kernels_of_the_head_dims(tmp_path, capsys):
    src = make_tree(tmp_path)
    assert patch.main([str(src), "--head-dims", "64", "128", "--cxx-std", "c++20"]) == 0
    setup = (src / "setup.py").read_text()
    kept = re.findall(r'"csrc/flash_attn/src/(\S+\.cu)"', setup)
    assert sorted(kept) == sorted(f"flash_{k}_hdim{d}_{t}_sm80.cu" for k in ("fwd", "bwd", "fwd_split")
                                  for d in (64, 128) for t in ("fp16", "bf16"))
    assert '"csrc/flash_attn/flash_api.cpp"' in setup
    for flag in ("LOCAL", "SOFTCAP", "CAUSAL"):  # host compiler and nvcc alike
        assert setup.count(f"-DFLASHATTENTION_DISABLE_{flag}") == 2
    assert "c++17" not in setup and setup.count("-std=c++20") == 2
    assert "setup_requires" not in setup and "setuptools.command.bdist_wheel" in setup
    switch = (src / "csrc/flash_attn/src/static_switch.h").read_text()
    assert "(HEADDIM > 32 && HEADDIM <= 64) || (HEADDIM > 96 && HEADDIM <= 128)" in switch
    assert re.findall(r"kHeadDim = (\d+)", switch) == ["64", "128"]
    assert "#define CAUSAL_SWITCH" in switch and "TORCH_CHECK(!(COND)" in switch
    api = (src / "csrc/flash_attn/flash_api.cpp").read_text()
    assert api.count("CAUSAL_SWITCH(params.is_causal, Is_causal") == 2 and "BOOL_SWITCH" not in api
    assert "12 kernel files" in capsys.readouterr().out
    package = {}
    exec((src / "flash_attn/__init__.py").read_text(), package)  # what `import flash_attn` then says
    assert package["KERNEL_HEAD_DIMS"] == (64, 128) and package["__version__"] == "2.8.3"


def test_all_kernels_only_makes_the_build_offline(tmp_path):
    src = make_tree(tmp_path)
    before = {p: p.read_text() for p in src.rglob("*") if p.is_file()}
    assert patch.main([str(src), "--all-kernels"]) == 0
    setup = (src / "setup.py").read_text()
    assert len(re.findall(r'"csrc/flash_attn/src/\S+\.cu"', setup)) == 72
    assert "setup_requires" not in setup and "-std=c++17" in setup and "DISABLE" not in setup
    assert all(p.read_text() == text for p, text in before.items() if p.name != "setup.py")


def test_unexpected_text_fails_and_writes_nothing(tmp_path, capsys):
    src = make_tree(tmp_path)
    api = src / "csrc/flash_attn/flash_api.cpp"
    api.write_text(api.read_text().replace("BOOL_SWITCH(params.is_causal", "BOOL_SWITCH(params.causal", 1))
    before = {p: p.read_text() for p in src.rglob("*") if p.is_file()}
    assert patch.main([str(src)]) == 1
    assert "flash_api.cpp: expected 2 occurrence(s)" in capsys.readouterr().err
    assert all(p.read_text() == text for p, text in before.items())  # not half patched
    assert patch.main([str(make_tree(tmp_path / "again"))]) == 0
    assert patch.main([str(tmp_path / "again" / "flash_attn-2.8.3")]) == 1  # patching twice is refused


def test_head_dim_switch_ranges():
    assert "(HEADDIM > 0 && HEADDIM <= 32)" in patch.headdim_switch([32])
    text = patch.headdim_switch([64, 256])
    assert "(HEADDIM > 32 && HEADDIM <= 64) || (HEADDIM > 192 && HEADDIM <= 256)" in text
    assert "head dims 33-64, 193-256 only" in text
    assert all(line.endswith("\\") for line in text.splitlines()[:-1])  # one macro


@pytest.mark.skipif(not os.environ.get("FLASH_ATTN_SDIST"), reason="FLASH_ATTN_SDIST (flash_attn-2.8.3*.tar.gz) unset")
def test_patch_applies_to_the_real_source_distribution(tmp_path):
    with tarfile.open(os.environ["FLASH_ATTN_SDIST"]) as tar:
        tar.extractall(tmp_path, filter="data")
    (src,) = tmp_path.iterdir()
    assert patch.main([str(src), "--cxx-std", "c++20"]) == 0
    assert re.findall(r"kHeadDim = (\d+)", (src / "csrc/flash_attn/src/static_switch.h").read_text()) == ["64", "128"]
