"""How much does medasl's `train` add to a training epoch, and is its inference as fast as MONAI's?

Two comparisons, run in this one process on the same network and data:

- training: one epoch of `medasl.ops.train.train` (no validation, no checkpoints)
  against the textbook hand-written PyTorch loop: the same 3-D U-Net
  (`medasl.ops.nets.build("unet3d", ...)`, same initial weights), the same loss
  (`make_loss("dice_ce")`: MONAI DiceCELoss(to_onehot_y=True, softmax=True)),
  torch.optim.Adam(lr=1e-3), batches of 2 in a random order. The hand-written loop
  builds its tensors from the arrays once, up front, and holds them all in memory;
  medasl converts each case (Volume -> tensor) per batch, as it does in a pipeline run:
  that conversion is part of what is measured.
- inference: `medasl.ops.train.infer` with sliding windows against MONAI's
  `sliding_window_inference` + softmax on the same tensor and the same module (outputs
  checked to agree). medasl's `window` is in (x, y, z) order, MONAI's `roi_size` in
  array order (z, y, x).

Data: synthetic, from medasl's own `medasl.ops.io.phantom` (CT phantoms), windowed
(level 40, width 400) and rescaled to [0, 1] with `medasl.ops.pre`.

    python benchmarks/train_infer.py                   # 8 cases of 64x64x48, 3 epochs x 2 repeats
    python benchmarks/train_infer.py --epochs 2 --repeat 1 --infer-repeat 2

Reported: median seconds per training epoch over all counted epochs (the first epoch of
each run is a warm-up, not counted), median seconds per inferred volume, the ratios
medasl / reference. Goals (issue 4, printed, not asserted): medasl's training epoch at
most 10% slower than the hand-written loop; medasl's inference not slower than MONAI's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NET = "unet3d"
CHANNELS = (8, 16, 32, 64, 128)
PARAMS: dict[str, object] = {"in_channels": 1, "classes": 2, "channels": CHANNELS, "strides": (2, 2, 2, 2)}
LEVEL, WIDTH = 40.0, 400.0
LR = 1e-3
BATCH = 2
SEED = 0
WINDOW_XYZ = (64, 64, 48)  # medasl's window, (x, y, z)
OVERLAP = 0.25
BLEND = "gaussian"

NOTES = [
    "Same network on both sides: nets.build('unet3d', channels=(8, 16, 32, 64, 128), strides 2x4, 2 residual "
    "units), the same initial weights (the seed medasl's train uses), the same loss module (make_loss('dice_ce')), "
    "Adam(lr=1e-3), batches of 2.",
    "Hand-written loop: all image and label tensors built once before timing and kept in memory; each batch is "
    "an index into them. medasl: each batch's Volumes are converted to tensors (a float32 copy of the image, an "
    "int64 copy of the label, made once per training) inside the epoch, as in a pipeline run: that is part of "
    "what is measured.",
    "medasl's epoch time is `seconds` from its returned history (the epoch loop: batches, loss check, the "
    "per-epoch copy of the weights it keeps as the 'best' ones); building the network and optimizer is outside "
    "both sides' timings.",
    "Interleaved: the hand-written loop runs one epoch after each medasl epoch, from train's `progress` "
    "callback (after medasl has taken that epoch's time), so that load from other processes hits both sides alike; "
    "the first epoch of each side is a warm-up, not counted.",
    "The batch orders differ (each side draws its own permutation), so the losses agree only roughly.",
    "Inference: medasl's infer (sliding windows by MONAI's sliding_window_inference inside, softmax, result as a "
    "channels-last probs Volume) against sliding_window_inference + softmax on a ready tensor, batch 1.",
]


def make_cases(n: int, size: tuple[int, int, int], seed: int) -> list:
    """`n` phantom cases of `size` (x, y, z), windowed and rescaled to [0, 1], as Case(id, Pair(image, label))."""
    from medasl.ops import io, pre
    from medasl.runtime.values import Case, Pair

    cases = []
    for case in io.phantom(cases=n, size=size, seed=seed):
        image = pre.rescale(pre.window(case.value.input, LEVEL, WIDTH), 0.0, 1.0)
        cases.append(Case(case.id, Pair(image, case.value.target)))
    return cases


class HandLoop:
    """The textbook loop on the same network, loss and optimizer; tensors built once, up front."""

    def __init__(self, cases: list) -> None:
        import torch

        from medasl.ops import losses, nets, train

        # The same initial weights as medasl's train(seed=SEED) draws.
        self.module = nets.build(NET, dict(PARAMS), seed=train._seed_for(SEED, "init"))
        self.loss_fn = losses.make_loss("dice_ce")
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=LR)
        self.images = torch.stack([torch.from_numpy(np.asarray(c.value.input.array, dtype=np.float32))[None]
                                   for c in cases])
        self.labels = torch.stack([torch.from_numpy(np.asarray(c.value.target.array, dtype=np.int64))[None]
                                   for c in cases])
        self.epochs = 0

    def epoch(self) -> tuple[float, float]:
        """One epoch: (seconds, mean loss)."""
        import torch

        clock = time.perf_counter()
        torch.manual_seed(SEED + self.epochs)
        self.epochs += 1
        self.module.train()
        order = torch.randperm(len(self.images))
        total = 0.0
        for start in range(0, len(self.images), BATCH):
            index = order[start:start + BATCH]
            x, y = self.images[index], self.labels[index]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.module(x), y)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(index)
        return time.perf_counter() - clock, total / len(self.images)


def training_run(cases: list, epochs: int) -> dict[str, object]:
    """One medasl `train` of epochs + 1 epochs with one hand-written epoch after each of its epochs (run from
    its `progress` callback, after medasl has taken its epoch's time), so that both sides see the same machine
    state; the first epoch of each side is a warm-up."""
    from medasl.ops import train
    from medasl.runtime.values import Network, OperatorRef

    hand = HandLoop(cases)
    hand_s: list[float] = []
    hand_loss: list[float] = []
    medasl_cpu: list[float] = []
    hand_cpu: list[float] = []
    cpu = [time.process_time()]  # process CPU time at the end of the last hand epoch (or the start)

    def after_epoch(record: dict[str, object]) -> None:
        now = time.process_time()
        medasl_cpu.append(now - cpu[0])  # medasl's epoch and its bookkeeping between epochs
        seconds, loss = hand.epoch()
        cpu[0] = time.process_time()
        hand_cpu.append(cpu[0] - now)
        hand_s.append(seconds)
        hand_loss.append(loss)

    clock = time.perf_counter()
    fit = train.train(Network(NET, dict(PARAMS), None), cases, OperatorRef("dice_ce"), optimizer=train.adam(lr=LR),
                      epochs=epochs + 1, batch=BATCH, seed=SEED, progress=after_epoch)
    wall = time.perf_counter() - clock - sum(hand_s)
    return {"medasl": [float(r["seconds"]) for r in fit.history[1:]], "hand": hand_s[1:],
            "medasl_wall": wall / (epochs + 1), "medasl_loss": float(fit.history[-1]["loss"]),
            "hand_loss": hand_loss[-1], "medasl_cpu": medasl_cpu[1:], "hand_cpu": hand_cpu[1:]}


def compare_inference(size: tuple[int, int, int], repeat: int) -> dict[str, float]:
    """Median wall and CPU seconds per volume of each side, and the max |difference| of the probabilities."""
    import torch
    from monai.inferers import sliding_window_inference

    from medasl.ops import nets, train
    from medasl.runtime.values import Network, Trained

    module = nets.build(NET, dict(PARAMS), seed=SEED).eval()  # initialised, not trained: the cost is the same
    trained = Trained(Network(NET, dict(PARAMS), module))
    volume = make_cases(1, size, seed=SEED + 1)[0].value.input
    x = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None, None]
    roi = tuple(reversed(WINDOW_XYZ))  # MONAI: array order (z, y, x)

    def run_medasl() -> np.ndarray:
        probs = train.infer(trained, volume, window=WINDOW_XYZ, overlap=OVERLAP, blend=BLEND)
        return probs.array  # channels last

    def run_monai() -> torch.Tensor:
        with torch.no_grad():
            logits = sliding_window_inference(x, roi, 1, module, overlap=OVERLAP, mode=BLEND)
            return torch.softmax(logits, dim=1)

    ours, theirs = run_medasl(), run_monai()  # warm-up, and the agreement check
    diff = float(np.abs(np.moveaxis(ours, -1, 0) - theirs[0].numpy()).max())
    medasl_s, monai_s, medasl_cpu, monai_cpu = [], [], [], []
    for _ in range(repeat):  # alternated, so that drift in the machine's speed hits both
        clock, cpu = time.perf_counter(), time.process_time()
        run_medasl()
        medasl_s.append(time.perf_counter() - clock)
        medasl_cpu.append(time.process_time() - cpu)
        clock, cpu = time.perf_counter(), time.process_time()
        run_monai()
        monai_s.append(time.perf_counter() - clock)
        monai_cpu.append(time.process_time() - cpu)
    return {"medasl": statistics.median(medasl_s), "monai": statistics.median(monai_s), "diff": diff,
            "medasl_cpu": statistics.median(medasl_cpu), "monai_cpu": statistics.median(monai_cpu)}


def machine() -> str:
    import monai
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__} "
            f"with {torch.get_num_threads()} thread(s), MONAI {monai.__version__}, NumPy {np.__version__}, "
            f"Python {platform.python_version()}")


def _size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected XxYxZ, got {text!r}")
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="counted epochs per training run (default 3)")
    parser.add_argument("--repeat", type=int, default=2, help="training runs per side, alternated (default 2)")
    parser.add_argument("--cases", type=int, default=8, help="training cases (default 8)")
    parser.add_argument("--size", type=_size, default=(64, 64, 48), help="training case size XxYxZ (default 64x64x48)")
    parser.add_argument("--infer-size", type=_size, default=(160, 160, 96),
                        help="inferred volume size XxYxZ (default 160x160x96)")
    parser.add_argument("--infer-repeat", type=int, default=3, help="inferences per side (default 3)")
    parser.add_argument("--skip-infer", action="store_true", help="only the training comparison")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(SEED)
    cases = make_cases(args.cases, args.size, seed=SEED)
    medasl_s, hand_s, medasl_wall, ratios, medasl_cpu, hand_cpu = [], [], [], [], [], []
    run: dict[str, object] = {}
    for _ in range(args.repeat):
        run = training_run(cases, args.epochs)
        medasl_s += run["medasl"]
        hand_s += run["hand"]
        medasl_wall.append(run["medasl_wall"])
        ratios += [a / b for a, b in zip(run["medasl"], run["hand"])]
        medasl_cpu += run["medasl_cpu"]
        hand_cpu += run["hand_cpu"]
    m, h = statistics.median(medasl_s), statistics.median(hand_s)
    wall, ratio = statistics.median(medasl_wall), statistics.median(ratios)
    nx, ny, nz = args.size
    print(f"training: {NET} channels {CHANNELS}, {args.cases} cases of {nx}x{ny}x{nz}, batch {BATCH}, dice_ce, "
          f"Adam; median of {len(medasl_s)} epoch(s) per side ({args.repeat} run(s) x {args.epochs}, interleaved, "
          "warm-up epoch not counted):")
    print(f"  hand-written loop (tensors in memory)  {h:7.2f} s/epoch   last-epoch loss {run['hand_loss']:.4f}")
    print(f"  medasl train (converts per batch)      {m:7.2f} s/epoch   last-epoch loss {run['medasl_loss']:.4f}   "
          f"ratio {m / h:.3f} ({100 * (m - h) / h:+.1f}%)   (goal: at most +10%)")
    print(f"  median of the per-epoch ratios         {ratio:7.3f}   (each medasl epoch / the hand-written epoch "
          "right after it)")
    mc, hc = statistics.median(medasl_cpu), statistics.median(hand_cpu)
    print(f"  process CPU time per epoch             hand {hc:.2f} s, medasl {mc:.2f} s, ratio {mc / hc:.3f}   "
          "(all threads; less sensitive than wall time to other processes taking the cores)")
    print(f"  medasl train, call wall / epochs       {wall:7.2f} s/epoch   (includes the warm-up epoch and setup; "
          "hand epochs subtracted)")
    if not args.skip_infer:
        result = compare_inference(args.infer_size, args.infer_repeat)
        medasl_i, monai_i, diff = result["medasl"], result["monai"], result["diff"]
        mc, oc = result["medasl_cpu"], result["monai_cpu"]
        ix, iy, iz = args.infer_size
        wx, wy, wz = WINDOW_XYZ
        print(f"inference: one volume of {ix}x{iy}x{iz}, window {wx}x{wy}x{wz}, overlap {OVERLAP}, {BLEND} blending, "
              f"median of {args.infer_repeat}:")
        print(f"  MONAI sliding_window_inference+softmax {monai_i:7.2f} s/volume")
        print(f"  medasl infer                           {medasl_i:7.2f} s/volume   ratio {medasl_i / monai_i:.3f} "
              f"({100 * (medasl_i - monai_i) / monai_i:+.1f}%)   (goal: not slower)   max |diff| {diff:.2e}")
        print(f"  process CPU time per volume            MONAI {oc:.2f} s, medasl {mc:.2f} s, ratio {mc / oc:.3f}")
    print(f"machine: {machine()}")
    print("notes:")
    for note in NOTES:
        print(f"  - {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
