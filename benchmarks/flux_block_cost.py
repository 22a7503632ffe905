"""What one block of FLUX.1-dev costs in a training step, measured block by block (random weights, fp32).

A whole FLUX.1-dev does not fit 24 GB of RAM, and on a loaded 2-core CPU the step times of reduced-depth models
(`break-a-scene bench --model random:flux-dev-1d1s2t`) vary by a few seconds, more than a single-stream block
costs. So this times each kind of block alone, at FLUX.1-dev's width and the token counts of a 512 px (or
--resolution) step: a dual-stream block, a single-stream block, and a T5-XXL layer (512 tokens), each forward and
backward (the handles' gradient flows back through all of them), the median of --repeats after one warm-up.
With gradient checkpointing a block's forward runs twice, so its step cost is 2 x forward + backward.

    python benchmarks/flux_block_cost.py [--resolution 512] [--repeats 3] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers.models.transformers.transformer_flux import FluxPosEmbed, FluxSingleTransformerBlock, FluxTransformerBlock
from transformers import T5Config, T5EncoderModel

from breakascene.models.families.flux import T5_MAX_LENGTH, image_ids
from breakascene.models.tiny_flux import FLUX_DEV_SHAPE


def _time(run, repeats: int) -> tuple[float, float]:
    """Median seconds of forward and of backward of ``run()`` (which returns the outputs to sum), after a warm-up."""
    forward, backward = [], []
    for i in range(repeats + 1):
        started = time.perf_counter()
        out = run()
        middle = time.perf_counter()
        sum(o.float().mean() for o in out).backward()
        if i:  # the first round is the warm-up
            forward.append(middle - started)
            backward.append(time.perf_counter() - middle)
    return statistics.median(forward), statistics.median(backward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = FLUX_DEV_SHAPE
    dim, heads, head_dim = shape["heads"] * shape["head_dim"], shape["heads"], shape["head_dim"]
    latent = args.resolution // 8
    image_tokens = (latent // 2) ** 2
    torch.manual_seed(0)
    image = torch.randn(1, image_tokens, dim, requires_grad=True)
    text = torch.randn(1, T5_MAX_LENGTH, dim, requires_grad=True)
    temb = torch.randn(1, dim)
    ids = torch.cat([torch.zeros(T5_MAX_LENGTH, 3), image_ids(latent, latent, "cpu")])
    rope = FluxPosEmbed(theta=10000, axes_dim=list(shape["rope"]))(ids)

    results = {"resolution": args.resolution, "image_tokens": image_tokens, "text_tokens": T5_MAX_LENGTH,
               "threads": torch.get_num_threads(), "blocks": {}}
    dual = FluxTransformerBlock(dim, heads, head_dim)
    single = FluxSingleTransformerBlock(dim, heads, head_dim)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=shape["t5_hidden"], d_kv=shape["t5_kv"],
                                 d_ff=shape["t5_ff"], num_layers=1, num_heads=shape["t5_heads"],
                                 feed_forward_proj="gated-gelu", dropout_rate=0.0))
    t5_input = torch.randn(1, T5_MAX_LENGTH, shape["t5_hidden"], requires_grad=True)
    runs = {
        "dual-stream block": (dual, lambda: dual(image, text, temb, rope)),
        "single-stream block": (single, lambda: single(image, text, temb, rope)),
        "T5-XXL layer": (t5, lambda: [t5(inputs_embeds=t5_input).last_hidden_state]),
    }
    counted = {"T5-XXL layer": t5.encoder.block[0]}  # the layer, not the 1-layer model's token table
    for name, (module, run) in runs.items():
        module.requires_grad_(False)  # frozen weights, as in phase 1 and under LoRA: only activations get gradients
        forward, backward = _time(run, args.repeats)
        params = sum(p.numel() for p in counted.get(name, module).parameters())
        results["blocks"][name] = {"parameters": params, "forward_s": forward, "backward_s": backward,
                                   "step_s_checkpointed": 2 * forward + backward}
        print(f"{name}: {params / 1e6:.1f} M parameters, forward {forward:.2f} s, backward {backward:.2f} s, "
              f"step with checkpointing {2 * forward + backward:.2f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
