"""Four latent particles of "a cube" from the embedded prior, repelled from each other (about a
minute on 2 CPU cores), then the same run opened again from its folder.

    python examples/quickstart.py [STEPS]
"""

import sys

import scorestudio

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
run = scorestudio.train("image-particles-sds", "system.prompt_processor.prompt=a cube",
                        system__n_particles=4, system__guidance__repulsion__gamma=20,
                        trainer__max_steps=steps, trainer__val_check_interval=0, use_timestamp=False)
print("distinct colours:", run.metrics["distinct_colors"], "diversity:", round(run.metrics["diversity"], 3))

again = scorestudio.load_run(run.root)
images = again.render()                      # [4, 3, 64, 64] in [0, 1]
print("particles:", tuple(images.shape), "in", again.save_dir)
