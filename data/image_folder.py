"""Write a labelled image set in ImageNet layout ({train,val}/<class>/<name>.JPEG), with the dataset's
preprocessing.json and recipe.json beside it, into a staging folder renamed into place once complete (so an
interrupted write never leaves a half dataset where the steps look for one)."""
import json
import os
import shutil
import tempfile


def write_image_folder(output_dir, samples, augmentation, recipe):
    """``samples``: (split, class name, file stem, PIL image) tuples; returns how many were written."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}-", dir=parent)
    count = 0
    try:
        for split, class_name, stem, image in samples:
            class_dir = os.path.join(staging, split, class_name)
            os.makedirs(class_dir, exist_ok=True)
            image.convert("RGB").save(os.path.join(class_dir, f"{stem}.JPEG"), quality=95)
            count += 1
        with open(os.path.join(staging, "preprocessing.json"), "w") as f:
            json.dump(augmentation, f)
        with open(os.path.join(staging, "recipe.json"), "w") as f:
            json.dump(recipe, f, indent=2)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed or interrupted write leaves nothing behind
        raise
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    os.rename(staging, output_dir)
    return count
