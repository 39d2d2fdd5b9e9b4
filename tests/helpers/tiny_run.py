"""The tiny run the integration tests share, so that they train the same few runs: digits, resnet8 -> resnet8,
2 epochs of the quick recipe (the lr drops after epoch 1), on the CPU with one thread (bit-equal numbers from
one launch to the next). A test adds the method and whatever it varies."""

TINY_RUN = ["dataset=digits", "teacher=resnet8", "student=resnet8", "train=quick", "train.epochs=2",
            "train.milestones=[1]", "progress=false", "hardware=cpu", "hardware.threads=1"]
