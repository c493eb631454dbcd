"""alore: ALoRE and baseline PETL methods on timm backbones."""
