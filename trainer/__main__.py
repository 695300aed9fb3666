from trainer.cli import train_command

train_command()
