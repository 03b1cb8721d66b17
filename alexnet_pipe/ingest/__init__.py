"""Raw ImageNet in: the layouts (sources), image decoding and resizing, the prepare run, the sample data."""
