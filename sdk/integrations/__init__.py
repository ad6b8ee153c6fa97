"""Checkpointing callbacks for training frameworks, one line each (see docs/integrations.md).

    sdk.integrations.keras.CrowdComputeCallback          model.fit(callbacks=[...])
    sdk.integrations.lightning.CrowdComputeCallback      Trainer(callbacks=[...])
    sdk.integrations.transformers.CrowdComputeCallback   Trainer(callbacks=[...])
    sdk.integrations.torch.ResumableDataLoader           a DataLoader whose position is state

Importing this package or one of its modules loads no framework: each module imports
its framework the first time its callback class is looked up, so ``import sdk`` stays
light and a worker without a framework installed still imports the package.
"""
