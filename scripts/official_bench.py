"""Times the official MAR code (LTH14/mar, unmodified, imported from MAR_DIR) beside `disa bench`:
on the CPU (scripts/bench-official.sh) or on a CUDA GPU (scripts/bench-gpu.sh).

    python3 official_bench.py MAR_DIR --model builtin --weights W.pth [--device cpu|cuda]
        [--threads N] [--batch B] [--ar-steps K] [--repeats R] [--schedules S;S]

--model builtin: the built-in Fashion-MNIST model (MarConfig::fashion in src/model/config.rs),
  its weights from `disa convert --to official` (model_ema is timed; a mismatch fails loading).
--model mar_base|mar_large|mar_huge: the official model at its ImageNet 256 settings (as the
  official main.py builds it; MAR-B's head is 6 x 1024), freshly initialized: speed does not
  depend on the weights' values. Same shapes as `disa bench --shapes mar_base`.

CFG 3 (linear). Schedules: constant:N (MAR's own N-step diffusion, unclipped) and linear:A:B
(DiSA as MAR_DiSA does it: one respaced diffusion per AR step, T_k = B + floor((K-1-k)/(K-1)
· (A-B))), its timesteps clipped at 950). Prints ms per image: the median of R after one warm-up;
on CUDA each timing ends with torch.cuda.synchronize().
"""
import argparse
import statistics
import sys
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("mar_dir")
p.add_argument("--model", default="builtin", choices=["builtin", "mar_base", "mar_large", "mar_huge"])
p.add_argument("--weights", help="the built-in model as `disa convert --to official` writes it")
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
p.add_argument("--batch", type=int, default=1)
p.add_argument("--ar-steps", type=int, default=16)
p.add_argument("--cfg", type=float, default=3.0)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--schedules", default="constant:100;linear:50:5")
args = p.parse_args()
if args.model == "builtin" and not args.weights:
    sys.exit("--model builtin needs --weights (disa convert --to official --out W.pth)")
if args.device == "cuda" and not torch.cuda.is_available():
    sys.exit("--device cuda: torch sees no CUDA device")
if args.device == "cpu":
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official code calls .cuda(); stay on the CPU
if args.threads > 0:
    torch.set_num_threads(args.threads)

sys.path.insert(0, args.mar_dir)
from models import mar  # noqa: E402
from models import diffloss  # noqa: E402
from diffusion import gaussian_diffusion as gd  # noqa: E402
from diffusion.respace import SpacedDiffusion, space_timesteps  # noqa: E402

if args.model == "builtin":
    model = mar.MAR(img_size=32, vae_stride=1, patch_size=4, encoder_embed_dim=128, encoder_depth=2,
                    encoder_num_heads=4, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
                    vae_embed_dim=1, class_num=10, buffer_size=8, diffloss_d=3, diffloss_w=128)
    model.load_state_dict(torch.load(args.weights, map_location="cpu")["model_ema"])
    classes = 10
else:
    heads = {"mar_base": (6, 1024), "mar_large": (8, 1280), "mar_huge": (12, 1536)}[args.model]
    model = mar.__dict__[args.model](img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16,
                                     class_num=1000, buffer_size=64, diffloss_d=heads[0],
                                     diffloss_w=heads[1])
    classes = 1000
model = model.to(args.device).eval()
K = args.ar_steps


def diffusion(steps, clip):
    """create_diffusion(str(steps), "cosine") with every kept timestep clipped at `clip`."""
    kept = sorted({min(s, clip) for s in space_timesteps(1000, str(steps))})
    return SpacedDiffusion(use_timesteps=kept, betas=gd.get_named_beta_schedule("cosine", 1000),
                           model_mean_type=gd.ModelMeanType.EPSILON,
                           model_var_type=gd.ModelVarType.LEARNED_RANGE,
                           loss_type=gd.LossType.MSE)


def plan(schedule):
    kind, *n = schedule.split(":")
    if kind == "constant" and len(n) == 1:
        return [diffusion(int(n[0]), 1001)] * K  # 1001: no clip, as the official MAR
    if kind == "linear" and len(n) == 2:
        start, end = int(n[0]), int(n[1])
        if K == 1:
            return [diffusion(start, 950)]
        # MAR_DiSA's index: (upper - k) / upper * (len - 1), truncated (as src/schedule.rs).
        return [diffusion(end + int((K - 1 - k) / (K - 1) * (start - end)), 950) for k in range(K)]
    sys.exit(f"schedule {schedule!r}: constant:N or linear:START:END")


def ms_per_image(schedule):
    per_step, step = plan(schedule), [0]
    official = diffloss.DiffLoss.sample

    def sample(self, z, temperature=1.0, cfg=1.0):  # one call per AR step
        self.gen_diffusion = per_step[step[0]]
        step[0] += 1
        return official(self, z, temperature, cfg)

    diffloss.DiffLoss.sample = sample
    labels = (torch.arange(args.batch) % classes).to(args.device)
    times = []
    try:
        with torch.no_grad():
            for i in range(args.repeats + 1):
                step[0] = 0
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model.sample_tokens(args.batch, num_iter=K, cfg=args.cfg, cfg_schedule="linear",
                                    labels=labels)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if i > 0:
                    times.append(time.perf_counter() - start)
    finally:
        diffloss.DiffLoss.sample = official
    return statistics.median(times) * 1000 / args.batch


for schedule in args.schedules.split(";"):
    print(f"official {args.model} {args.device} threads {args.threads or torch.get_num_threads()} "
          f"batch {args.batch} K={K} {schedule}: {ms_per_image(schedule):.1f} ms/image", flush=True)
