"""Training and running policies: SAC + HER on the env, policy bundles, the Ray scale-out."""
