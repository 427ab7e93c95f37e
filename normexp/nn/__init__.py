"""The model wing: normalization layers and their registry, the CIFAR ResNet, and the rules that
turn one model into the per-device protocol (devices) and into packed seeds (packing). Each layer
declares its own rules; nothing here reads files or knows about runs."""
