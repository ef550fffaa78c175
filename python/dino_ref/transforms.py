"""Image transforms written after the official facebookresearch/dino code, on PIL images
with torchvision: the eval transform of `eval_knn.py` (bicubic Resize, CenterCrop,
ToTensor, Normalize) and the multi-crop augmentation `main_dino.DataAugmentationDINO` with
`utils.GaussianBlur` and `utils.Solarization`."""
import random

from PIL import ImageFilter, ImageOps
from torchvision import transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def eval_transform(resize, crop, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class GaussianBlur:
    """PIL Gaussian blur with probability `p`, radius ~ U(radius_min, radius_max)."""

    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if random.random() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """PIL solarisation (threshold 128) with probability `p`."""

    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


class DataAugmentationDINO:
    """Two global crops (blur always / blur 0.1 + solarisation 0.2) and `local_crops_number`
    local crops (blur 0.5), each flipped and colour-jittered; crop sizes, normalisation and
    the blur / solarisation probabilities and blur radii are arguments (the official code
    fixes 224/96, the ImageNet statistics and those probabilities: the defaults)."""

    def __init__(self, global_size, local_size, local_crops_number, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4), global_blur_prob=(1.0, 0.1),
                 local_blur_prob=0.5, blur_sigma=(0.1, 2.0), solarization_prob=(0.0, 0.2)):
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        bicubic = transforms.InterpolationMode.BICUBIC

        def crop(size, scale):
            return transforms.RandomResizedCrop(size, scale=scale, interpolation=bicubic)

        def blur(p):
            return GaussianBlur(p, *blur_sigma)

        def view(size, scale, blur_p, solarize_p):
            # A probability of 0 adds no step, so the default views draw the official random numbers.
            steps = [crop(size, scale), flip_and_color_jitter, blur(blur_p)]
            if solarize_p > 0:
                steps.append(Solarization(solarize_p))
            return transforms.Compose(steps + [normalize])
        self.global_transfo1 = view(global_size, global_crops_scale, global_blur_prob[0], solarization_prob[0])
        self.global_transfo2 = view(global_size, global_crops_scale, global_blur_prob[1], solarization_prob[1])
        self.local_transfo = view(local_size, local_crops_scale, local_blur_prob, 0.0)
        self.local_crops_number = local_crops_number

    def __call__(self, image):
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        return crops + [self.local_transfo(image) for _ in range(self.local_crops_number)]
