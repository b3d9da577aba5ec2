from prime_ray.cli import main

main()
