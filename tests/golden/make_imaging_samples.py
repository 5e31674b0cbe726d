"""Writes the imaging story's sample records (``examples/imaging/``): the radiology
results (ORU^R01) and the two CT studies (DICOM Part 10 headers, no pixel data).

Run ``python -m tests.golden.make_imaging_samples`` after editing; ``--check`` fails
when a file on disk differs from what this script writes. The golden inputs
``tests/golden/hl7v2/oru_r01_*.hl7`` are byte-identical copies of the ORUs.

The story (seeds/network.yaml, the Nanjing–Lai'an and Nansha–Hong Kong practices):
  * Lai'an (LAX2) orders a head CT for 王伟 (examples/hl7v2/orm_o01_lax2_ct.hl7,
    accession LA2026061000001); the CT study is done at Lai'an (lax2_ct_head.study);
    the Nanjing expert 徐静 (NJMU2) reads it remotely and signs a co-branded report.
  * Nansha (NSCH) performs a coronary CTA for the Hong Kong resident 許嘉瑋
    (examples/hl7v2/omi_o23_nsch_ct.hl7, accession NS2026061500017): the study
    (nsch_cta.study), the Chinese report of 何慧敏, and the English report of the
    Hong Kong radiologist 陳志明 (HKPMC), whose OBR-29 names the Chinese report.
"""

# ruff: noqa: E501  (segments stay whole, one per line, so that they read as sent)
from __future__ import annotations

import sys
from pathlib import Path

from tests.golden.dicom.make_studies import instance, issuer, part10, write_or_check

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "imaging"
GOLDEN = REPO / "tests" / "golden" / "hl7v2"

ORU: dict[str, tuple[str, list[str]]] = {
    # Exam at Lai'an, read and signed remotely by the Nanjing expert (co-branded).
    "oru_r01_lax2_ct_cobranded.hl7": (
        "utf-8",
        [
            "MSH|^~\\&|NJMU2_RIS|NJMU2^2.16.156.10011.99.1.3^ISO|LAX2_HIS|LAX2^2.16.156.10011.99.1.4^ISO|20260610113000+0800||ORU^R01^ORU_R01|NJMU220260610113000007|P|2.5.1|||AL|NE|CHN|UNICODE UTF-8|ZH^Chinese^ISO6391",
            "PID|1||0012345^^^LAX2^MR~341122196604200135^^^CHNRID^NNCHN||王^伟^^^^^L~WANG^WEI^^^^^A||19660420|M",
            "ORC|RE|PLC0001^LAX2|NJR2026061000001^NJMU2||CM",
            "OBR|1|PLC0001^LAX2|NJR2026061000001^NJMU2|CT001^头颅CT平扫^99LAX2|||20260610090500+0800|||||||||D1001^张^建国^^^^^^LAX2||LA2026061000001||||20260610112800+0800||CT|F|||||||N4102&徐&静&&&&&&NJMU2",
            "OBX|1|ST|113014^DICOM Study^DCM||2.16.156.10011.99.1.4.3.20260610.1||||||F|||20260610090500+0800|||||||||来安县第二人民医院^^^^^LAX2&2.16.156.10011.99.1.4&ISO^^^^LAX2",
            "OBX|2|TX|59776-5^检查所见^LN||左侧基底节区见一约8mm×6mm低密度软化灶，边界清楚，与2025年6月片比较无明显变化。||||||F",
            "OBX|3|TX|59776-5^检查所见^LN||脑室系统未见扩大，中线结构居中，脑沟脑裂未见增宽。||||||F",
            "OBX|4|TX|19005-8^诊断意见^LN||1. 左侧基底节区陈旧性腔隙性脑梗死，较前无变化。~2. 未见新发梗死及出血。||||||F",
        ],
    ),
    # Nansha CTA of the Hong Kong resident, Chinese report by 何慧敏 (NSCH radiology).
    "oru_r01_nsch_cta_zh.hl7": (
        "utf-8",
        [
            "MSH|^~\\&|NSCH_RIS|NSCH^2.16.156.10011.99.1.1^ISO|NSCH_HIS|NSCH^2.16.156.10011.99.1.1^ISO|20260616153000+0800||ORU^R01^ORU_R01|NSCH20260616153000031|P|2.5.1|||AL|NE|CHN|UNICODE UTF-8|ZH^Chinese^ISO6391",
            "PID|1||0098765^^^NSCH^MR~K583726A^^^HKID^NNHKG||許^嘉瑋^^^^^L~HUI^KA WAI^^^^^A||19570903|M",
            "ORC|RE|PLC2026061501^NSCH|NSR2026061601^NSCH||CM",
            "OBR|1|PLC2026061501^NSCH|NSR2026061601^NSCH|CT101^冠状动脉CT血管成像^99NSCH|||20260616100000+0800|||||||||NS0231^梁^志东^^^^^^NSCH||NS2026061500017||||20260616152500+0800||CT|F|||||||NS0415&何&慧敏&&&&&&NSCH",
            "OBX|1|ST|113014^DICOM Study^DCM||2.16.156.10011.99.1.1.3.20260615.17||||||F|||20260616100000+0800|||||||||广州市第一人民医院南沙医院^^^^^NSCH^^^^NSCH",
            "OBX|2|TX|59776-5^检查所见^LN||冠状动脉呈右优势型。左前降支近段见混合斑块，管腔狭窄约50%～60%。||||||F",
            "OBX|3|TX|59776-5^检查所见^LN||左回旋支及右冠状动脉未见明显狭窄。心脏各房室大小正常，心包未见积液。||||||F",
            "OBX|4|TX|19005-8^诊断意见^LN||左前降支近段混合斑块，中度狭窄（50%～60%），建议结合临床，必要时行冠状动脉造影。||||||F",
        ],
    ),
    # The Hong Kong radiologist's English report of the same study; OBR-29.2 names the
    # Chinese report (NSCH's filler number). Big5-HKSCS, as HKPMC sends.
    "oru_r01_hkpmc_cta_en.hl7": (
        "big5hkscs",
        [
            "MSH|^~\\&|HKPMC_RIS|HKPMC^1.3.6.1.4.1.99999.1.1^ISO|NSCH_RIS|NSCH^2.16.156.10011.99.1.1^ISO|20260617101500+0800||ORU^R01^ORU_R01|HKPMC20260617101500004|P|2.5.1|||AL|NE|HKG|BIG-5|EN^English^ISO6391",
            "PID|1||0098765^^^NSCH^MR~K583726A^^^HKID^NNHKG||許^嘉瑋^^^^^L~HUI^KA WAI^^^^^A||19570903|M",
            "ORC|RE|PLC2026061501^NSCH|HKR2026061701^HKPMC||CM",
            "OBR|1|PLC2026061501^NSCH|HKR2026061701^HKPMC|CT101^冠狀動脈CT血管成像^99NSCH|||20260616100000+0800|||||||||NS0231^梁^志東^^^^^^NSCH||NS2026061500017||||20260617101000+0800||CT|F||||^NSR2026061601&NSCH|||HK2001&CHAN&CHI MING&&&&&&HKPMC",
            "OBX|1|ST|113014^DICOM Study^DCM||2.16.156.10011.99.1.1.3.20260615.17||||||F|||20260616100000+0800|||||||||廣州市第一人民醫院南沙醫院^^^^^NSCH^^^^NSCH",
            "OBX|2|TX|59776-5^Procedure findings^LN||Right-dominant coronary circulation. Mixed plaque in the proximal left anterior descending artery with 50-60% luminal stenosis.||||||F",
            "OBX|3|TX|59776-5^Procedure findings^LN||No significant stenosis of the left circumflex or right coronary artery. Cardiac chambers normal in size; no pericardial effusion.||||||F",
            "OBX|4|TX|19005-8^Impression^LN||Moderate (50-60%) stenosis of the proximal LAD due to mixed plaque. Clinical correlation advised; invasive coronary angiography if indicated.||||||F",
        ],
    ),
}
GOLDEN_COPIES = {
    "oru_r01_lax2_ct_cobranded.hl7": "oru_r01_cobranded.hl7",
    "oru_r01_nsch_cta_zh.hl7": "oru_r01_chinese.hl7",
    "oru_r01_hkpmc_cta_en.hl7": "oru_r01_big5_english.hl7",
}

# (series number, description, instances, body part, laterality) per series
STUDIES: dict[str, dict[str, object]] = {
    "lax2_ct_head.study": {
        "charset": "GB18030",
        "patient": ("WANG^WEI=王^伟=", "0012345", "LAX2", "19660420", "M"),
        "institution": "来安县第二人民医院",
        "study": "2.16.156.10011.99.1.4.3.20260610.1",
        "accession": ("LA2026061000001", "LAX2"),
        "when": ("20260610", "090500"),
        "referrer": "ZHANG^JIANGUO=张^建国=",
        "description": "头颅CT平扫",
        "series": [
            (1, "定位像 Scout", 1, "HEAD", ""),
            (2, "轴位 5mm 脑窗", 4, "HEAD", ""),
            (3, "轴位 5mm 骨窗", 3, "HEAD", ""),
        ],
    },
    "nsch_cta.study": {
        "charset": "ISO_IR 192",
        "patient": ("HUI^KA WAI=許^嘉瑋=", "0098765", "NSCH", "19570903", "M"),
        "institution": "广州市第一人民医院南沙医院",
        "study": "2.16.156.10011.99.1.1.3.20260615.17",
        "accession": ("NS2026061500017", "NSCH"),
        "when": ("20260616", "100000"),
        "referrer": "LIANG^ZHIDONG=梁^志东=",
        "description": "冠状动脉CT血管成像",
        "series": [
            (1, "冠脉CTA 轴位 0.625mm", 4, "HEART", ""),
            (2, "曲面重建 LAD", 2, "HEART", ""),
            (3, "钙化积分", 2, "HEART", ""),
        ],
    },
}


def oru_bytes(name: str) -> bytes:
    charset, segments = ORU[name]
    return ("\r".join(segments) + "\r").encode(charset)


def _instance(spec: dict[str, object], series: tuple[int, str, int, str, str], n: int) -> bytes:
    number, description, _, body_part, laterality = series
    name, pid, issuer_code, birth, sex = spec["patient"]  # type: ignore[misc]
    accession, acc_issuer = spec["accession"]  # type: ignore[misc]
    date, time = spec["when"]  # type: ignore[misc]
    ds = instance(
        str(spec["study"]),
        number,
        n,
        SpecificCharacterSet=spec["charset"],
        StudyDate=date,
        StudyTime=time,
        SeriesDate=date,
        SeriesTime=time,
        AccessionNumber=accession,
        IssuerOfAccessionNumberSequence=issuer(acc_issuer),
        Manufacturer="DEMO",
        InstitutionName=spec["institution"],
        ReferringPhysicianName=spec["referrer"],
        StudyDescription=spec["description"],
        SeriesDescription=description,
        PatientName=name,
        PatientID=pid,
        IssuerOfPatientID=issuer_code,
        PatientBirthDate=birth,
        PatientSex=sex,
        BodyPartExamined=body_part,
        Laterality=laterality or None,
        StudyID="1",
    )
    return part10(ds)


def files() -> dict[Path, bytes]:
    out: dict[Path, bytes] = {}
    for name in ORU:
        out[EXAMPLES / name] = oru_bytes(name)
        out[GOLDEN / GOLDEN_COPIES[name]] = oru_bytes(name)
    for folder, spec in STUDIES.items():
        for series in spec["series"]:  # type: ignore[attr-defined]
            for n in range(1, series[2] + 1):
                path = EXAMPLES / folder / f"series{series[0]}" / f"IM{n:04d}.dcm"
                out[path] = _instance(spec, series, n)
    return out


def main(argv: list[str]) -> int:
    return write_or_check(files(), argv, REPO)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
