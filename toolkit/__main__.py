from mcpm_mobile.cli import main

main()
