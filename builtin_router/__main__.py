import sys

from builtin_router.proxy import main

sys.exit(main())
