import sys

from contentembed.services.image_encoder.service import main

sys.exit(main(sys.argv[1:]))
