"""GPU probe: eager vs torch.compile (default, reduce-overhead) in normexp's train_epoch."""
import sys, time, torch
from omegaconf import OmegaConf
from normexp import packing
from normexp.config import Config
from normexp.data import TrainBatches
from normexp.models import CifarResNet
from normexp.norms import build_norm
from normexp.optim import build_optimizer, build_scheduler
from normexp.trainer import train_epoch
dev = torch.device("cuda")
cfg = OmegaConf.structured(Config); cfg.trainer.progress = False
depth = int(sys.argv[1]) if len(sys.argv) > 1 else 8
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev)
labels = (torch.arange(4096) % 10).to(dev)
mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
for batch in (2, 64):
    for pack in (1, 3):
        for mode in ("eager", "default", "reduce-overhead"):
            ms = []
            for s in range(pack):
                torch.manual_seed(s); ms.append(CifarResNet(build_norm({"name": "bn"}), depth=depth, base_width=16))
            model = packing.pack(ms).to(dev, memory_format=torch.channels_last)
            n = 1024 if batch == 2 else 4096
            train = TrainBatches(images[:n], labels[:n], batch, mean, std, seeds=range(pack), memory_format=torch.channels_last)
            cfg.data.batch_size = batch
            opt = build_optimizer(model, cfg.optim, batch); sch = build_scheduler(opt, cfg.optim, len(train), 3)
            run = model if mode == "eager" else torch.compile(model, mode=None if mode == "default" else mode)
            t0 = time.perf_counter()
            try:
                r1, _, _ = train_epoch(cfg, run, opt, sch, train, 1)
                first = time.perf_counter() - t0
                r2, _, _ = train_epoch(cfg, run, opt, sch, train, 2)
                print(f"R{depth} bn b{batch} pack{pack} {mode}: first epoch {first:.1f}s, then {pack * r2[0]['images_per_s']:.0f} img/s "
                      f"({r2[0]['train_seconds'] / len(train) * 1e3:.2f} ms/step), loss {r2[0]['train_loss']:.3f}", flush=True)
            except Exception as e:
                print(f"R{depth} bn b{batch} pack{pack} {mode}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            torch._dynamo.reset()
