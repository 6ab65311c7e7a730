#!/usr/bin/env bash
# The CUDA checks and the GPU benchmark of issue 8 in one run, on a GPU machine that has PyTorch and torchdiffeq
# but no package registry (this project's lent device machines):
#
#   make device-wheels                 # here, once: torchsde, torchode and their small needs into .whl/ (~130 KB)
#   bash bench/gpu_check.sh OUT_DIR    # there, from the repository root, with .whl/ carried along
#
# It writes to OUT_DIR (default artifacts/gpu): gpu.txt (the card), cuda_tests.log (tests/nodecore/test_cuda.py:
# CUDA against CPU results, and the host syncs per step), and tutorial_cuda_<batch>.{log,json} (bench/tutorial_bench.py
# on cuda:0 against torchdiffeq and torchode, at the tutorial's batch of 512 and at 65,536).
# STAGES picks parts ("tests 512 65536" by default); EPOCHS and REPEATS shorten the benchmark (200 and 2).
# Its exit status is the tests'.
set -uo pipefail
out=${1:-artifacts/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } \
    | tee "$out/gpu.txt"
status=0
variants="torchdiffeq-odeint torchdiffeq-odeint_adjoint torchode-autograd nodecore-nodecore-autograd
          nodecore-nodecore-adjoint nodecore-step-autograd nodecore-step-adjoint"
for stage in ${STAGES:-tests 512 65536}; do
    if [ "$stage" = tests ]; then
        # --confcutdir: the top-level conftest starts a Prefect server, which the library's CUDA tests do not need.
        timeout 150 python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/nodecore tests/nodecore/test_cuda.py \
            2>&1 | tee "$out/cuda_tests.log"
        status=${PIPESTATUS[0]}
    else
        # shellcheck disable=SC2086  # the variant names are words
        timeout 200 python3 bench/tutorial_bench.py --device cuda:0 --batch "$stage" --epochs "${EPOCHS:-200}" \
            --repeats "${REPEATS:-2}" --variants $variants --json "$out/tutorial_cuda_$stage.json" \
            2>&1 | tee "$out/tutorial_cuda_$stage.log"
    fi
done
exit "$status"
