"""Times the official MAR code (LTH14/mar, unmodified, imported from MAR_DIR) on the CPU with the
built-in model's weights, as scripts/bench-official.sh runs it beside `disa bench`.

    python3 official_cpu_bench.py MAR_DIR WEIGHTS.pth THREADS BATCH REPEATS

K = 16, CFG 3 (linear), ms per image, median of REPEATS after one warm-up, for
constant:100 (MAR's own 100-step diffusion) and linear 50->5 (DiSA as MAR_DiSA does it: one
respaced diffusion per AR step, T_k = 5 + floor(45 (K-1-k)/(K-1)), its timesteps clipped at 950).
WEIGHTS is `disa convert --to official` of the built-in model (model_ema is timed).
"""
import statistics
import sys
import time

import torch

mar_dir, weights = sys.argv[1], sys.argv[2]
threads, batch, repeats = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.Tensor.cuda = lambda self, *a, **k: self  # the official code calls .cuda(); stay on the CPU
sys.path.insert(0, mar_dir)
from models.mar import MAR  # noqa: E402
from models import diffloss  # noqa: E402
from diffusion import gaussian_diffusion as gd  # noqa: E402
from diffusion.respace import SpacedDiffusion, space_timesteps  # noqa: E402

K, CFG = 16, 3.0
torch.set_num_threads(threads)
# The built-in model's configuration (MarConfig::fashion in src/model/config.rs); a mismatch
# fails in load_state_dict below.
model = MAR(img_size=32, vae_stride=1, patch_size=4, encoder_embed_dim=128, encoder_depth=2,
            encoder_num_heads=4, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
            vae_embed_dim=1, class_num=10, buffer_size=8, diffloss_d=3, diffloss_w=128)
model.load_state_dict(torch.load(weights, map_location="cpu")["model_ema"])
model.eval()


def diffusion(steps, clip):
    """create_diffusion(str(steps), "cosine") with every kept timestep clipped at `clip`."""
    kept = sorted({min(s, clip) for s in space_timesteps(1000, str(steps))})
    return SpacedDiffusion(use_timesteps=kept, betas=gd.get_named_beta_schedule("cosine", 1000),
                           model_mean_type=gd.ModelMeanType.EPSILON,
                           model_var_type=gd.ModelVarType.LEARNED_RANGE,
                           loss_type=gd.LossType.MSE)


def plan(schedule):
    if schedule == "constant:100":
        return [diffusion(100, 1001)] * K  # 1001: no clip, as the official MAR
    table = [diffusion(s, 950) for s in range(5, 51)]
    return [table[int((K - 1 - k) / (K - 1) * (len(table) - 1))] for k in range(K)]


def ms_per_image(schedule):
    per_step, step = plan(schedule), [0]
    official = diffloss.DiffLoss.sample

    def sample(self, z, temperature=1.0, cfg=1.0):  # one call per AR step
        self.gen_diffusion = per_step[step[0]]
        step[0] += 1
        return official(self, z, temperature, cfg)

    diffloss.DiffLoss.sample = sample
    labels = torch.arange(batch) % 10
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            step[0] = 0
            start = time.perf_counter()
            model.sample_tokens(batch, num_iter=K, cfg=CFG, cfg_schedule="linear", labels=labels)
            if i > 0:
                times.append(time.perf_counter() - start)
    diffloss.DiffLoss.sample = official
    return statistics.median(times) * 1000 / batch


for schedule in ["constant:100", "linear:50:5"]:
    print(f"official threads {threads} batch {batch} {schedule}: "
          f"{ms_per_image(schedule):.1f} ms/image", flush=True)
