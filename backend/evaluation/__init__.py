"""Quality harness: the standard click protocol and the benchmark on GrabCut / COCO_MVal."""
