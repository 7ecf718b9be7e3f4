"""DNSSEC validation: verification, trust anchors, denial proofs, the chain of trust."""
