"""The training engine, one module per job; the CLI calls one function of it per command.

    from stts.config import load_config
    from stts.engine.train import train            # train(cfg) -> summary dict
    from stts.engine.evaluate import run_eval       # run_eval(cfg) -> report dict (+ JSON file)
    train(load_config("configs/mvit_b_16x4_stts_t0.5_s0.7_k400.yaml", ["train.epochs=2"]))

Modules: train (the loop), evaluate (multi-view metrics), build (run config -> plan -> model, AMP
dtype), selection_stats (what the selectors keep, over batches and ranks), optim (AdamW groups, lr
schedule, scorer-only warm-up), distill (a frozen teacher's soft predictions in the loss), checkpoint
(resume, fine-tune starts, safetensors export), distributed (torchrun / DDP helpers), logging (text,
JSONL, TensorBoard, summaries). See docs/ARCHITECTURE.md.
"""
