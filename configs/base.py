"""Shared defaults for every experiment.

    from configs import base
    def get_config(arg=None):
      config = base.get_config()
      config.model.name = "cnn"
      return config

Every field a run reads is declared here with its type, so that a command-line
override of the wrong type, or of a key that does not exist, is refused.
"""

import ml_collections


def parse_arg(arg, **defaults):
  """Parses "runlocal,size=small" into a ConfigDict, typed by `defaults`.

  A bare word is a boolean flag; `key=value` casts to the default's type.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(
          f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      parsed[key] = value.lower() not in ("0", "false", "no") if value else True
    else:
      parsed[key] = kind(value)
  return parsed


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"  # a registered name, or "package.module:Class"
  # Every other field of config.model is passed to the model's constructor.

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"          # digits | fashion_mnist | synthetic | any TFDS name
  config.data.tfds_dir = ""            # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.data.source_dir = ""          # local raw files (Fashion-MNIST IDX); "" -> the builder's default
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.batch_size = 64          # global, across all devices and processes
  config.data.eval_batch_size = 256    # global
  config.data.random_crop = 0          # pad by this many pixels, then crop back; 0 = off
  config.data.random_flip = False      # horizontal flip
  config.data.worker_threads = 4       # grain threads, each preparing whole batches
  config.data.worker_processes = 0     # jpeg: train batches in processes (0: the threads)
  config.data.image_size = 224         # jpeg: the side of the crops
  config.data.crop_scale = (0.08, 1.0)  # jpeg: random-resized crop's share of the area
  config.data.eval_crop = 0.875        # jpeg: held-out centre crop, of the shorter side
  config.data.cache_mb = 4096          # hold a split in memory if it fits; 0 = never
  config.data.prefetch = 4             # batches prefetched by grain
  config.data.synthetic_shape = (8, 8, 1)
  config.data.synthetic_classes = 10
  # Text (task.name="lm"): shakespeare | text | tfds:NAME | synthetic_tokens
  config.data.seq_len = 256            # tokens per window; windows hold seq_len + 1
  config.data.text_files = ""          # data.name="text": a glob of .txt / .txt.gz files
  config.data.holdout_fraction = 0.1   # tail of each file held out for validation
  config.data.vocab_size = 256         # synthetic_tokens only; text: from data.tokenizer
  config.data.tokenizer = "bytes"      # bytes | bpe:PATH (tokenizer.json, or vocab.json +
  #                                      merges.txt) | sentencepiece:PATH (.model)
  config.data.text_feature = "text"    # data.name="tfds:NAME": the feature holding the text
  config.data.tokenizer_train = ml_collections.ConfigDict()   # --mode=tokenizer
  config.data.tokenizer_train.kind = "bpe"        # bpe (byte-level) | sentencepiece (unigram)
  config.data.tokenizer_train.vocab_size = 4096
  config.data.eval_limit = 0           # evaluate at most this many windows; 0 = all
  config.data.restart_epoch_on_resume = False  # resume with another batch_size: restart the epoch

  config.task = ml_collections.ConfigDict()
  config.task.name = "classification"
  config.task.label_smoothing = 0.0

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adamw"          # adamw | sgd
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "warmup_cosine"  # constant | warmup_cosine | warmup_linear
  config.optim.warmup_steps = 0
  config.optim.end_learning_rate_factor = 0.0  # final lr as a fraction of peak
  config.optim.weight_decay = 0.0      # decoupled; masked off biases and norm scales
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.momentum = 0.9          # sgd
  config.optim.nesterov = False        # sgd
  config.optim.clip_norm = 0.0         # global-norm clipping; 0 = off
  config.optim.grad_accum_steps = 1    # micro-batches per step; batch_size must divide
  # A task with several parameter groups (a GAN's generator and discriminator) gets one
  # optimizer per group; optim.groups.NAME overrides fields of optim for group NAME,
  # e.g. optim.groups.discriminator = ConfigDict({"learning_rate": 4e-4}).
  config.optim.groups = ml_collections.ConfigDict()

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 1000
  config.train.log_every = 50
  config.train.eval_every = 500        # 0 = only at the end
  config.train.checkpoint_every = 500  # 0 = only at the end
  config.train.keep_checkpoints = 3    # the newest N
  config.train.keep_period = 0         # and every K-th step for good; 0 = none
  config.train.async_checkpoints = True
  config.train.compilation_cache = "~/.cache/whetstone/jax"  # persistent XLA cache; "" = off
  config.train.peak_tflops = 0.0       # per chip, for mfu; 0 = the datasheet bf16 peak if known
  config.train.restore_step = -1       # -1 = newest; N = roll back to N (newer steps move aside)
  config.train.skip_nonfinite_steps = 0  # skip up to N non-finite updates, then stop (exit 3)
  config.train.allow_dtype_cast = False  # restore despite dtype differences; casts are logged
  config.train.allow_schedule_change = False  # resume although num_steps or the lr schedule changed
  config.train.allow_seed_change = False  # resume although seed (hence the data order) changed
  config.train.allow_data_position_mismatch = False  # resume although data position != step
  # A finite explosion: the train loss above divergence_factor x the measured initial loss
  # for divergence_patience log intervals in a row stops the run (exit 3); 0 = off.
  config.train.divergence_factor = 10.0
  config.train.divergence_patience = 3
  config.train.profile_steps = ()      # (START, COUNT): a trace of COUNT steps in workdir/profile/

  config.eval = ml_collections.ConfigDict()
  config.eval.step = -1                # --mode=eval and sample: -1 = newest checkpoint

  # Evaluators (train_lib/evaluators/): label -> {name, every (-1: at train.eval_every and
  # the end; 0: only at the end; N: every N steps), the evaluator's own fields}.
  config.evals = ml_collections.ConfigDict()
  # The task's metrics on the held-out split; num_examples > 0: only its first ones.
  config.evals.loss = ml_collections.ConfigDict({"name": "loss", "every": -1, "num_examples": 0})

  # Experiment trackers beside metrics.jsonl and TensorBoard, e.g. "wandb" or "wandb,mlflow";
  # process 0 only, and a tracker that fails is reported, never fatal.
  config.writers = ""
  config.wandb = ml_collections.ConfigDict()
  config.wandb.project = "whetstone"
  config.wandb.entity = ""             # "" = the default entity of the API key
  config.wandb.name = ""               # "" = the workdir's name
  config.wandb.mode = ""               # "" = $WANDB_MODE or online; offline | online | disabled
  config.mlflow = ml_collections.ConfigDict()
  config.mlflow.tracking_uri = ""      # "" = $MLFLOW_TRACKING_URI or ./mlruns
  config.mlflow.experiment = "whetstone"
  config.mlflow.run_name = ""          # "" = the workdir's name

  config.sample = ml_collections.ConfigDict()   # --mode=sample (language models)
  config.sample.prompt = "\n"
  config.sample.max_new_tokens = 500
  config.sample.temperature = 0.8      # 0 = greedy
  config.sample.top_k = 200            # 0 = the whole vocabulary
  config.sample.num_samples = 1
  config.sample.seed = 0
  config.sample.num_images = 64        # image tasks (ddpm, gan): samples.npz and plots/samples.png

  config.sanity = ml_collections.ConfigDict()   # --mode=sanity
  config.sanity.data_batches = 4       # train batches inspected by the data check
  config.sanity.init_loss_tolerance = 0.5  # relative distance allowed from ln(classes)
  config.sanity.overfit_steps = 300    # at most this many steps on one repeated batch
  config.sanity.overfit_fraction = 0.3  # pass below this fraction of the loss a model that
                                       # ignores its input reaches (the targets' entropy)
  config.sanity.label_signal_steps = 200  # at most this many steps, real vs shuffled targets
  config.sanity.label_signal_eval_every = 10  # steps between held-out scores
  config.sanity.label_signal_eval_batches = 2  # eval-split batches scored
  config.sanity.label_signal_fraction = 0.05  # pass: the real run's held-out loss ends this
                                       # fraction of the way from the shuffled run's to the floor
                                       # (a broken pairing measures ~0.005; a char MLM ~0.06)

  config.lr_range = ml_collections.ConfigDict()  # --mode=lr_range (Smith, 2017)
  config.lr_range.min_lr = 1e-7
  config.lr_range.max_lr = 10.0
  config.lr_range.num_steps = 200      # exponential sweep from min_lr to max_lr
  config.lr_range.diverge_factor = 4.0  # stop once the smoothed loss exceeds this x its minimum

  config.compile = ml_collections.ConfigDict()  # --mode=compile: ahead of time, nothing runs
  config.compile.topology = "local"    # local (the devices present) | a TPU topology: v5e:4x4, ...
  config.compile.search = ""           # "" | micro_batch (largest that fits) | fsdp (smallest)
  config.compile.step_time_s = 0.0     # > 0: report the MFU a step of this time would reach
  config.compile.memory_gib = 0.0      # > 0: memory per device to fit in (default: the chip's)

  # Mesh axis sizes; one may be -1 to take the remaining devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.expert = 1               # expert parallelism (mixture-of-experts models)
  # Logical axis names (annotated by the models) -> mesh axes. Unlisted names, and
  # dimensions the mesh axes do not divide, are replicated.
  config.mesh.rules = (
      ("batch", ("data", "fsdp")),  # activations' batch dimension
      ("embed", "fsdp"),            # parameters' model dimension: FSDP
      ("vocab", "tensor"),          # tensor parallelism: vocabulary, heads, MLP units
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("mlp", "tensor"),
  )

  # Start from foreign weights (parameters only; the optimizer starts fresh), e.g.
  # "hf_gpt2:path/model.safetensors", "torchvision_resnet:path/resnet50.safetensors".
  # Ignored once the workdir has a checkpoint. train_lib/weights/ lists the formats.
  config.init_from = ""
  config.init_skip = ()                # parameter paths kept at their fresh init ("head",)

  config.dtype = "float32"             # float32 | bfloat16 | fp8 (bf16 + fp8 matmuls); params float32
  return config


def transformer_model():
  """Every switch of models/transformer.py at its default, so that each one is a
  --config.model.KEY=VALUE override away (tests check these match the model)."""
  model = ml_collections.ConfigDict()
  model.name = "transformer"
  model.vocab_size = 256
  model.num_layers = 6
  model.num_heads = 6
  model.num_kv_heads = 0        # 0 = num_heads; 1 = multi-query; else grouped
  model.d_model = 384
  model.mlp_dim = 0             # 0 = 4 * d_model
  model.max_len = 256
  model.position = "learned"    # learned | sinusoidal | rope | alibi | none
  model.rope_base = 10000.0
  model.norm = "layernorm"      # layernorm | rmsnorm
  model.norm_impl = "auto"      # auto (Pallas LayerNorm on GPU where possible) | pallas | xla
  model.pre_norm = True
  model.activation = "gelu"     # gelu | relu | sq_relu | swiglu
  model.loss_impl = "auto"      # auto (Pallas softmax statistics on GPU) | pallas | xla
  model.attention_impl = "auto"  # auto | cudnn | xla | pallas (flash attention with dropout)
  model.tie_embeddings = True
  model.use_bias = False
  model.dropout = 0.0           # embeddings and both residual branches
  model.attention_dropout = 0.0  # attention probabilities (auto: Pallas flash on GPU)
  model.scaled_residual_init = True
  model.scan_layers = True
  model.remat = "none"          # none | full | dots | dots_no_batch
  model.loss_chunk = 0          # fused head+loss chunk (positions); 0 = whole logits
  model.causal = True           # False: bidirectional attention (an encoder: task mlm)
  return model
