"""The network: encoders -> fusion -> head, the task each head serves, metrics, freezing,
adversarial attacks and the domain-adaptation objectives."""
