"""The measured bases, the assumed throughputs and the assumptions behind every request
(:mod:`pndecomp.resources`)."""

MB = 2**20

# ---- measured bases (2-core EPYC, torch 2.13 CPU, transformers 5.24, Snakemake 9.27) -------------------
#: The job's own Snakemake process, which runs the rule's script as a child: `snakemake -n` of the default
#: config peaked at 432 MB (it parses the workflow, whose common.smk imports torch through pndecomp.config).
SNAKEMAKE_MB = 450
#: A script that imports a torch stage module (pndecomp.stages.*) and transformers (every torch rule): RSS
#: 371 MB after the imports (torch alone 220 MB, torch + transformers 240 MB).
TORCH_PROCESS_MB = 400
#: A script that also loads an LM: transformers' model classes add 111 MB (462 MB measured).
LM_PROCESS_MB = 500
#: A torch-free script (fit_probe: numpy, pandas, pyarrow, scikit-learn): RSS 188 MB after the imports.
NUMPY_PROCESS_MB = 200
#: A tokenizer in memory (layer_scores, make_windows: a ~50k-entry BPE vocabulary with its merges).
TOKENIZER_MB = 150

#: Over the estimated peak: the estimates' own error and what allocators keep between frees (glibc's heap,
#: pyarrow's pool). tests/test_resources.py measures peaks of 0.4-0.67 × MARGIN × the estimate; the
#: tightest, probe_features on the tiny model, peaked at the estimate itself (503 vs 502 MB).
MARGIN = 1.5
MIN_MEM_MB = 1000

# ---- assumed throughputs for the runtimes (deliberately low) -------------------------------------------------
#: float32 matmul throughput of one job on its CPU cores: 20 GFLOP/s. One core of a 2-core AVX2 EPYC ran
#: SmolLM2's float32 forward at ~330 tokens/s (6.2 s per 16 × 128 batch, ~70 GFLOP/s); an AVX512-BF16 core
#: ~1,450 tokens/s in bfloat16.
CPU_FLOPS = 2e10
#: Effective GPU throughput: 30 TFLOP/s, a tenth of the 300 TFLOP/s sustained bf16 the paper-scale
#: estimate (docs/results.md) assumes for an H100/H200, and below an A100's tf32 peak (156).
GPU_FLOPS = 3e13
#: Effective float64 throughput of a data-centre GPU (the closed-form baselines' statistics and solve): 5 TFLOP/s,
#: a quarter of an A100's 19.5 TFLOP/s float64 tensor-core peak and under a tenth of an H100's 67.
GPU_FLOAT64_FLOPS = 5e12
#: Host-to-device bytes per second of stored states read into a GPU job (pageable copies: ~half of PCIe 4).
HOST_TO_DEVICE_BYTES_PER_S = 1e10
#: float64 numpy values processed per second, temporaries included (elementwise passes, sorts per value).
NUMPY_VALUES_PER_S = 5e7
#: Tokenizer throughput (fast BPE tokenizers do ~0.5-1 M tokens/s on one core), and per candidate window
#: the labels, the decode and the hash of make_windows.
TOKENS_PER_S = 3e5
SECONDS_PER_CANDIDATE_WINDOW = 2e-3
#: Two Snakemake start-ups (the submitting one and the one inside the job), imports, model load.
STARTUP_MINUTES = 3
GENEROSITY = 2.0
MIN_RUNTIME = 10

# ---- assumptions where the config says nothing -----------------------------------------------------------
#: Documents read by make_windows from files or hf without corpus.max_documents: The Pile's val + test
#: shards, the paper's corpus, hold ~429,000, of ~1,450-2,200 GPT-NeoX tokens each (docs/results.md).
ASSUMED_DOCUMENTS = 500_000
ASSUMED_TOKENS_PER_DOCUMENT = 2_200
#: Local corpus files (corpus.source: files) bound the count instead when they exist at DAG time: their text
#: (zstd-compressed JSON lines count 4x their size) holds at most one window per T bytes (a token is at least
#: a byte) and one document per 50 bytes; tokenizing takes ~4 bytes per token.
ZSTD_RATIO = 4
BYTES_PER_TOKEN = 4
#: Classes of a per-class probe task (The Pile has 22 subsets; the embedded corpus 8 domains) and of any
#: task in the probe fits' cost.
ASSUMED_CLASSES = 22
#: Vocabulary when the model's config cannot be read: the largest among the adapter families (Gemma's).
ASSUMED_VOCAB = 256_000
#: The LM's attention head size, for the number of heads (attention width / 64: Pythia, SmolLM2, Llama).
ASSUMED_LM_HEAD_SIZE = 64
#: lbfgs iterations per probe fit: bench/probes.py counted 35-270 (about 100 on average) on synthetic
#: data of the paper's shapes, and 10-143 on SmolLM2's real features.
ASSUMED_PROBE_ITERATIONS = 300
#: scikit-learn's lbfgs logistic regression, CPU seconds per iteration per (row x feature), a + b x classes:
#: bench/probes.py measured 0.096-0.395 s per iteration at 40,000 rows x 1,024-2,048 features x 8-22 classes.
PROBE_SECONDS_PER_ROW_FEATURE = (1.25e-9, 1.6e-10)
#: float64 values of one chunk of lag features (pndecomp.baselines._CHUNK_VALUES).
RIDGE_CHUNK_VALUES = 2**24
