"""data: images in: the sources (CIFAR-10, class folders), one image file, class-balanced subsets, and the
augmentation applied to batches on the device."""
