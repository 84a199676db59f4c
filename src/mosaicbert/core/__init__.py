"""What every command shares: config loading and the shared schema, device and precision rules, optimizer and
scheduler, the Trainer's building blocks, Composer model wrappers, weights and checkpoint loading, callbacks,
tokenizer loading, run folders and console output. Imports mosaicbert.model only, never a workflow."""
