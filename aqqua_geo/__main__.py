from aqqua_geo.cli import main

main()
