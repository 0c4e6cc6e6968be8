"""Does torch.compile (inductor, C++ on CPU) speed up the bf16 training step? One model, eager vs compiled,
interleaved, medians of 5 (issue 19's open 2.5x goal).

    /work/main/.venv/bin/python bench/bench_compile.py unet|p4m_unet|gridnet

Step = forward under bf16 autocast, cross-entropy, backward, AdamW; batch 8 x 3 x 128 x 128, 1 thread. Prints the
compile time and both step times. Results are in bench/README.md ("torch.compile").
"""
import time, torch, sys
torch.set_num_threads(1)
from eqseg.models import build
from eqseg.losses import build_loss
name = sys.argv[1]
net = build(name, 3, 2, depth=3, width=16) if name != "gridnet" else build(name, 3, 2)
layout = torch.channels_last if name in ("unet", "gridnet") else torch.contiguous_format
net = net.to(memory_format=layout)
x = torch.randn(8, 3, 128, 128).contiguous(memory_format=layout); y = torch.randint(0, 2, (8, 128, 128))
lossf = build_loss({"ce": 1.0, "lovasz": 1.0})
def mk(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return step
import copy
eager = mk(net)
comp_net = copy.deepcopy(net)
t0 = time.time(); cstep = mk(torch.compile(comp_net)); cstep(); print("compile s", time.time()-t0, flush=True)
for s in (eager, cstep): s()
te, tc = [], []
for r in range(5):
    t=time.perf_counter(); eager(); te.append(time.perf_counter()-t)
    t=time.perf_counter(); cstep(); tc.append(time.perf_counter()-t)
import statistics as st
print(name, "eager bf16 ms", st.median(te)*1e3, "compiled ms", st.median(tc)*1e3)
