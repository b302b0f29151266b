"""What the wider phantom domains add to a case beyond v1's patient and scanner.

:func:`sample_world` draws it once per case from a generator of its own (a child of
``np.random.SeedSequence([seed, 2])``), never from the case's main generator, so v1's random
stream is untouched, and the world of a seed stays the same whatever slices, pixel spacing
or thickness the caller fixes. ``v1`` cases have no world (``None``) and none of these features.

* contrast: enhanced pulmonary arteries and veins, aorta, SVC and heart chambers (150-400 HU)
* heart border: lobulated myocardium inside a smoother pericardial sac (variable epicardial
  fat), cardiophrenic fat pads, a visible pericardium line, pericardial recesses
* lung base: diaphragm domes with muscle bundles (bumps) and a muscle layer over the liver
  and spleen, subphrenic fat, a gastric air bubble under the left dome
* vessels and airways: branch-point bulges at bifurcations, bronchi with varied calibre and
  wall thickness
* benign look-alikes (never in the truth): calcified granulomas, linear and band-like scars,
  pleural plaques, mediastinal/hilar lymph nodes, pericardial recesses
* diffuse disease: emphysema (in the habitus), bullae, large ill-defined ground-glass patches
* artefacts: metal (port, pacemaker, sternotomy wires) with radial streaks, breathing motion
  at the lung base
* masses of 30-80 mm (in the truth, kind ``"mass"``)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from services.modeling.phantom.params import RANGES, Scanner

Lobe = tuple[int, float, float, float]  # harmonic order, amplitude, phase, twist along z


@dataclass(frozen=True)
class Contrast:
    phase: str  # "arterial" (pulmonary side brightest) | "venous"
    pulmonary: float  # HU of the pulmonary trunk and arteries
    veins: float  # pulmonary veins
    aorta: float
    svc: float
    right_heart: float
    left_heart: float
    myocardium: float


@dataclass(frozen=True)
class World:
    domain: str
    prone: bool
    contrast: Contrast | None
    heart_lobes: tuple[Lobe, ...]  # myocardium outline
    sac_lobes: tuple[Lobe, ...]  # pericardial sac outline (smoother)
    fat_pads: tuple[tuple[float, float, float, float], ...]  # angle, height w, amplitude, width
    pericardium_hu: float | None  # None: no visible pericardium line
    chamber_frac: float  # blood pool radius relative to the myocardium outline
    diaphragm_bumps: tuple[tuple[float, float, float, float], ...]  # x, y (rel.), mm, mm
    diaphragm_muscle: float  # mm
    subphrenic_fat: float  # mm
    stomach: tuple[float, float] | None  # gas bubble radius (mm), fluid fraction
    bulge_fraction: float  # share of vessel bifurcations with a branch-point bulge
    bulge_scale: tuple[float, float]  # bulge radius relative to the parent branch
    airway_min_radius: float  # smallest artery radius with a bronchus beside it (mm)
    airway_wall: float  # bronchial wall as a fraction of the outer radius
    granulomas: int
    scars: int
    plaques: int
    lymph_nodes: int
    recesses: int
    bullae: int
    ggo_patches: int
    metal: str | None  # "port" | "pacemaker" | "sternotomy"
    motion: float  # breathing-motion amplitude at the lung base (mm; 0: none)
    motion_doubling: float  # chance that a moving slice also shows a ghost
    mass: bool

    def as_dict(self) -> dict[str, object]:
        def clean(v: object) -> object:
            if isinstance(v, float):
                return round(v, 3)
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        out = clean(asdict(self))
        assert isinstance(out, dict)
        return out


def _lobes(extra: np.random.Generator, orders: tuple[int, ...], amp: float) -> tuple[Lobe, ...]:
    return tuple(
        (
            m,
            float(extra.uniform(0.3, 1.0)) * amp,
            float(extra.uniform(0, 2 * np.pi)),
            float(extra.uniform(-2.0, 2.0)),
        )
        for m in orders
    )


def _count(extra: np.random.Generator, p: float, lo: int, hi: int) -> int:
    return int(extra.integers(lo, hi + 1)) if extra.random() < p else 0


def _contrast(extra: np.random.Generator) -> Contrast:
    arterial = bool(extra.random() < 0.5)
    if arterial:  # pulmonary arterial phase: right heart and arteries brightest
        pulmonary = float(extra.uniform(250.0, 400.0))
        aorta = float(extra.uniform(150.0, 320.0))
        veins = float(extra.uniform(150.0, 280.0))
        right = pulmonary * float(extra.uniform(0.9, 1.0))
        left = aorta * float(extra.uniform(0.9, 1.05))
    else:  # venous / systemic phase: everything alike
        aorta = float(extra.uniform(150.0, 250.0))
        pulmonary = aorta * float(extra.uniform(0.9, 1.1))
        veins = aorta * float(extra.uniform(0.9, 1.05))
        right = left = aorta * float(extra.uniform(0.92, 1.05))
    return Contrast(
        phase="arterial" if arterial else "venous",
        pulmonary=pulmonary,
        veins=veins,
        aorta=aorta,
        svc=float(extra.uniform(max(pulmonary, aorta), 400.0)),
        right_heart=right,
        left_heart=min(left, 400.0),
        myocardium=float(extra.uniform(80.0, 130.0)),
    )


def sample_world(extra: np.random.Generator, domain: str, scanner: Scanner) -> World:
    ranges = RANGES[domain]
    contrast = _contrast(extra) if extra.random() < ranges.contrast_p else None
    n_bumps = _count(extra, 0.65, 2, 8)
    bumps = tuple(
        (
            float(extra.choice([-0.42, 0.45]) + extra.normal(0.0, 0.18)),
            float(extra.uniform(-0.5, 0.6)),
            float(extra.uniform(3.0, 12.0)),
            float(extra.uniform(7.0, 22.0)),
        )
        for _ in range(n_bumps)
    )
    n_pads = _count(extra, 0.6, 1, 2)
    pads = tuple(
        (
            float(extra.uniform(-2.4, -0.6)),  # anterior-lateral, in the heart's frame
            float(extra.uniform(-0.9, -0.4)),  # near the base (cardiophrenic angle)
            float(extra.uniform(0.06, 0.18)),
            float(extra.uniform(0.25, 0.45)),
        )
        for _ in range(n_pads)
    )
    metal = None
    if extra.random() < 0.15:
        metal = str(extra.choice(["port", "pacemaker", "sternotomy"]))
    moving = extra.random() < 0.15
    return World(
        domain=domain,
        prone=scanner.prone,
        contrast=contrast,
        heart_lobes=_lobes(extra, (2, 3, 4, 5), 0.06),
        sac_lobes=_lobes(extra, (2, 3), 0.035),
        fat_pads=pads,
        pericardium_hu=float(extra.uniform(15.0, 40.0)) if extra.random() < 0.6 else None,
        chamber_frac=float(extra.uniform(0.66, 0.8)),
        diaphragm_bumps=bumps,
        diaphragm_muscle=float(extra.uniform(2.5, 6.0)),
        subphrenic_fat=float(extra.uniform(1.0, 4.0)) if extra.random() < 0.35 else 0.0,
        stomach=(
            (float(extra.uniform(14.0, 35.0)), float(extra.uniform(0.0, 0.5)))
            if extra.random() < 0.5
            else None
        ),
        bulge_fraction=float(extra.uniform(0.2, 0.6)),
        bulge_scale=(float(extra.uniform(1.05, 1.2)), float(extra.uniform(1.25, 1.55))),
        airway_min_radius=float(extra.uniform(0.35, 0.6)),
        airway_wall=float(extra.uniform(0.14, 0.4)),
        granulomas=_count(extra, 0.45, 1, 4),
        scars=_count(extra, 0.35, 1, 3),
        plaques=_count(extra, 0.2, 1, 5),
        lymph_nodes=_count(extra, 0.5, 1, 4),
        recesses=_count(extra, 0.4, 1, 2),
        bullae=_count(extra, 0.12, 1, 4),
        ggo_patches=_count(extra, 0.2, 1, 3),
        metal=metal,
        motion=float(extra.uniform(2.0, 8.0)) if moving else 0.0,
        motion_doubling=float(extra.uniform(0.0, 0.5)) if moving else 0.0,
        mass=bool(extra.random() < 0.15),
    )
